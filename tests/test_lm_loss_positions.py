"""language_model_loss computes logits only where a label is supervised: same loss as the model's own."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.evaluation.lm import language_model_loss


def test_prompt_masked_rows_score_as_the_model_own_loss(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = [
        {"input_ids": [5, 17, 33, 2, 90, 41, 8], "labels": [-100, -100, -100, -100, 90, 41, 8]},
        {"input_ids": [7, 8, 9, 10], "labels": [-100, 8, 9, -100]},
    ]
    expected_sum, expected_count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            labels = torch.tensor([row["labels"]])
            loss = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).loss
            supervised = int(labels[:, 1:].ne(-100).sum())
            expected_sum, expected_count = (
                expected_sum + loss.item() * supervised,
                expected_count + supervised,
            )
    scored = language_model_loss(model, rows, pad_token_id=0, batch_size=2)
    assert scored["tokens"] == expected_count == 3 + 2
    assert scored["loss"] == pytest.approx(expected_sum / expected_count, abs=1e-5)
