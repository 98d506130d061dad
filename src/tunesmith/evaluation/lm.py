"""Language-model loss and perplexity computed batch by batch: only one batch of logits is ever in memory."""

from __future__ import annotations

import math

import torch

from tunesmith.data.collate import IGNORE, PadCollator


@torch.no_grad()
def language_model_loss(model, rows: list[dict], pad_token_id: int, batch_size: int = 8) -> dict:
    """Mean next-token loss over every supervised label in `rows` (input_ids + labels), and its perplexity."""
    collator = PadCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # Longest first: similar lengths share a batch, so little padding is computed.
    ordered = sorted(rows, key=lambda row: -len(row["input_ids"]))
    for start in range(0, len(ordered), batch_size):
        batch = collator(ordered[start : start + batch_size])
        targets = batch["labels"][:, 1:].to(device)
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits[:, :-1]
        total += torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        ).item()
        count += int(targets.ne(IGNORE).sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {
        "loss": round(loss, 6),
        "perplexity": round(math.exp(min(loss, 50.0)), 4),
        "tokens": count,
        "examples": len(rows),
    }
