"""Encoder-decoder scores batch by batch: loss per target token, and greedy generation of targets."""

from __future__ import annotations

import math

import torch

from tunesmith.config import EvalConfig
from tunesmith.data.collate import IGNORE
from tunesmith.evaluation.generation import answer_text
from tunesmith.evaluation.text_metrics import generation_scores
from tunesmith.tasks.seq2seq.data import Seq2SeqCollator, SourceEncoder


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
        # the first token is the decoder's start token, not an answer
        outputs += [answer_text(row, stop_ids, tokenizer) for row in generated[:, 1:].tolist()]
    model.train(was_training)
    return outputs


def generate_for(model, encoder: SourceEncoder, rows: list[dict], settings: EvalConfig) -> list[str]:
    """Greedy targets for tokenized rows, eval.max_new_tokens at most, eval.batch_size at a time."""
    sources = [row["input_ids"] for row in rows]
    return generate_targets(
        model,
        sources,
        encoder.tokenizer,
        encoder.stop_token_ids(),
        settings.max_new_tokens,
        settings.batch_size,
    )


def test_scores(model, encoder: SourceEncoder, rows: list[dict], kept: list, settings: EvalConfig) -> dict:
    """Loss per target token on every row, ROUGE/BLEU on the first eval.generations of them."""
    scores = target_loss(model, rows, encoder.pad_token_id, settings.batch_size)
    count = min(len(rows), settings.generations)
    if count:
        outputs = generate_for(model, encoder, rows[:count], settings)
        generated = generation_scores([example.target for example in kept[:count]], outputs)
        scores |= {k: v for k, v in generated.items() if k != "examples"} | {"generated_examples": count}
    return scores
