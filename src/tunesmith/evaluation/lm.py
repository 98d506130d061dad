"""Language-model loss and perplexity computed batch by batch: only one batch of logits is ever in memory."""

from __future__ import annotations

import math

import numpy as np
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
        # Logits only at positions some row supervises (as the training loop's sparse head): a batch of
        # full-vocabulary logits (8 x 512 x 49k floats for SmolLM2) and its copies set the quickstart's peak memory.
        keep = targets.ne(IGNORE).any(dim=0).nonzero().squeeze(-1)
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            logits_to_keep=keep,
        ).logits
        total += torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            targets[:, keep].reshape(-1),
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


def token_loss_sums(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(summed loss, supervised tokens) of next-token prediction: their ratio is the loss per supervised token."""
    return label_loss_sums(logits[:, :-1], labels[:, 1:])


def label_loss_sums(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(summed loss, supervised tokens) of logits against the labels at the same positions (-100 ignored): an
    encoder-decoder's decoder, whose input is already the shifted target, or logits shifted by the caller."""
    scores = logits.astype(np.float64)
    scores -= scores.max(axis=-1, keepdims=True)
    log_probs = scores - np.log(np.exp(scores).sum(axis=-1, keepdims=True))
    keep = labels != -100
    picked = np.take_along_axis(log_probs, np.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
    return float(-(picked * keep).sum()), int(keep.sum())


COUNTS = {"tokens", "examples", "generated_examples"}  # evaluation results that are counts, not scores
