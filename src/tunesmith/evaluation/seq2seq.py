"""Encoder-decoder scores batch by batch: loss per target token, and greedy generation of targets."""

from __future__ import annotations

import math

import numpy as np
import torch

from tunesmith.data.collate import IGNORE
from tunesmith.data.seq2seq import Seq2SeqCollator


@torch.no_grad()
def target_loss(model, rows: list[dict], pad_token_id: int, batch_size: int = 8) -> dict:
    """Mean cross-entropy over every target token in `rows` (summed, then divided by the token count, so a
    batch of short targets weighs no more than its tokens), and its perplexity."""
    collator = Seq2SeqCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(rows, key=lambda row: -len(row["input_ids"]))  # similar lengths share a batch
    for start in range(0, len(ordered), batch_size):
        batch = {k: v.to(device) for k, v in collator(ordered[start : start + batch_size]).items()}
        logits = model(**batch).logits
        total += torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            batch["labels"].reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        ).item()
        count += int(batch["labels"].ne(IGNORE).sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {
        "loss": round(loss, 6),
        "perplexity": round(math.exp(min(loss, 50.0)), 4),
        "tokens": count,
        "examples": len(rows),
    }


@torch.no_grad()
def generate_targets(
    model,
    sources: list[list[int]],
    tokenizer,
    stop_ids: list[int],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 0.0,
) -> list[str]:
    """Decode a target for each tokenized source (greedy unless temperature > 0); decoding ends at EOS."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        width = max(map(len, chunk))
        # The encoder reads the whole source at once: right padding, masked, changes nothing.
        input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in chunk], device=device)
        attention_mask = torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids in chunk], device=device
        )
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            **sampling,
        )
        for row in generated[:, 1:].tolist():  # the first token is the decoder's start token, not an answer
            answer = []
            for token in row:
                if token in stop_ids:
                    break
                answer.append(token)
            outputs.append(tokenizer.decode(answer, skip_special_tokens=True).strip())
    model.train(was_training)
    return outputs


def target_loss_sums(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(summed loss, target tokens) of decoder logits against labels at the same positions (no shift: the
    decoder's input is already the shifted target)."""
    scores = logits.astype(np.float64)
    scores -= scores.max(axis=-1, keepdims=True)
    log_probs = scores - np.log(np.exp(scores).sum(axis=-1, keepdims=True))
    keep = labels != IGNORE
    picked = np.take_along_axis(log_probs, np.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
    return float(-(picked * keep).sum()), int(keep.sum())
