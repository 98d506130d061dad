"""Gradient accumulation: batch 2 x accumulation 2 takes the same step as batch 4 (loss and every gradient)."""

import copy

import pytest
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

from conftest import prompt_response_rows, topic_rows
from tunesmith.data.collate import PadCollator
from tunesmith.data.prepare import encode
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.data.validate import Example
from tunesmith.tasks.classification.trainer import ClassificationTrainer, class_weights
from tunesmith.tasks.modalities import TextCollator
from tunesmith.training.loop import CausalLMTrainer


class CaptureGradients(TrainerCallback):
    """The accumulated gradients at the optimizer step, before the weights move."""

    def __init__(self):
        self.gradients = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = {
            name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None
        }


def one_step(trainer_class, model, rows, collator, batch, accumulation, folder, **settings):
    """Train one optimizer step; return the step's loss (summed over micro-batches) and the gradients."""
    args = TrainingArguments(
        output_dir=str(folder),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1e-3,
        max_grad_norm=0.0,  # no clipping: compare the raw accumulated gradients
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=0,
        data_seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        use_cpu=True,
    )
    capture = CaptureGradients()
    losses = []

    class Recording(trainer_class):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            losses.append(loss.item())  # already scaled for accumulation, as the Trainer sums it
            return loss

    trainer = Recording(
        model=copy.deepcopy(model), args=args, data_collator=collator, train_dataset=rows, callbacks=[capture]
    )
    for name, value in settings.items():
        setattr(trainer, name, value)
    trainer.train()
    assert len(losses) == accumulation
    return sum(losses), capture.gradients


def assert_same_step(first, second):
    (loss_a, gradients_a), (loss_b, gradients_b) = first, second
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert gradients_a.keys() == gradients_b.keys() and gradients_a
    for name in gradients_a:
        difference = (gradients_a[name] - gradients_b[name]).abs().max().item()
        assert difference < 1e-5, (name, difference, gradients_a[name].abs().max().item())


@pytest.mark.parametrize("sparse_lm_head", [True, False])
def test_accumulation_matches_one_big_batch_for_causal_lm(tiny_model, tokenizer, tmp_path, sparse_lm_head):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.use_cache = False
    renderer = Renderer(tokenizer, "chat")
    rows = [
        encode(Example(str(i), (("user", r["prompt"]), ("assistant", r["response"]))), renderer, LossMask())
        for i, r in enumerate(prompt_response_rows(4, seed=3))
    ]
    supervised = [sum(label != -100 for label in row["labels"]) for row in rows]
    assert len(set(supervised)) > 1  # unequal answer lengths: a mean of per-batch means would differ
    collator = PadCollator(tokenizer.pad_token_id)
    settings = {"sparse_lm_head": sparse_lm_head}
    big = one_step(CausalLMTrainer, model, rows, collator, 4, 1, tmp_path / "a", **settings)
    accumulated = one_step(CausalLMTrainer, model, rows, collator, 2, 2, tmp_path / "b", **settings)
    assert_same_step(big, accumulated)


@pytest.mark.parametrize("multi_label", [False, True])
def test_accumulation_matches_one_big_batch_for_class_weighted_loss(tiny_bert, tmp_path, multi_label):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    names = ["business", "politics", "sport"]
    texts = topic_rows(8, seed=1)[:4]
    if multi_label:
        targets = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    else:
        targets = [0, 0, 2, 1]  # weights differ per class, so the weighted mean depends on who shares a batch
    rows = [{**tokenizer(row["text"]), "labels": target} for row, target in zip(texts, targets, strict=True)]
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert,
        num_labels=len(names),
        ignore_mismatched_sizes=True,  # a new 3-class head
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    weights = class_weights(targets + ([[0.0, 1.0, 1.0]] if multi_label else [1, 1]), 3, multi_label)
    settings = {"loss_weights": weights, "multi_label": multi_label}
    collator = TextCollator(tokenizer.pad_token_id)
    big = one_step(ClassificationTrainer, model, rows, collator, 4, 1, tmp_path / "a", **settings)
    accumulated = one_step(ClassificationTrainer, model, rows, collator, 2, 2, tmp_path / "b", **settings)
    assert_same_step(big, accumulated)
