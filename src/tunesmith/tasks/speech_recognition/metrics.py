"""Speech-recognition scores: word and character error rates (jiwer) on normalized texts, and transcription."""

from __future__ import annotations

from collections.abc import Callable

import torch


def text_normalizer(kind: str) -> Callable[[str], str]:
    """english: Whisper's EnglishTextNormalizer (case, punctuation, spelling, numbers written out or not are
    made alike, as in Whisper's own WER figures); basic: Whisper's BasicTextNormalizer (lower case, punctuation
    and bracketed asides removed); none: the text as written, whitespace collapsed."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if kind == "english":
        return EnglishTextNormalizer(
            {}
        )  # the British-to-American spelling map ships with hub checkpoints only
    if kind == "basic":
        return BasicTextNormalizer()
    return lambda text: " ".join(text.split())


def error_rates(references: list[str], hypotheses: list[str], normalizer: str = "english") -> dict:
    """Corpus WER and CER (all edits over all reference words or characters, jiwer), on normalized texts.

    A reference that normalizes to nothing has no words to err on: it is left out and counted."""
    import jiwer

    normalize = text_normalizer(normalizer)
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses, strict=True)]
    scored = [(r, h) for r, h in pairs if r.strip()]
    if not scored:
        return {"wer": None, "cer": None, "examples": 0, "empty_references": len(pairs)}
    refs, hyps = [r for r, _ in scored], [h for _, h in scored]
    return {
        "wer": round(jiwer.wer(refs, hyps), 6),
        "cer": round(jiwer.cer(refs, hyps), 6),
        "examples": len(scored),
        "words": sum(len(r.split()) for r in refs),
        "empty_references": len(pairs) - len(scored),
        "normalizer": normalizer,
    }


def example_wer(reference: str, hypothesis: str, normalizer: str = "english") -> float | None:
    """One example's WER (None when its normalized reference is empty)."""
    import jiwer

    normalize = text_normalizer(normalizer)
    reference = normalize(reference)
    return round(jiwer.wer(reference, normalize(hypothesis)), 6) if reference.strip() else None


def generation_arguments(model, language: str | None, task: str) -> dict:
    """generate()'s language and task for a multilingual Whisper (its generation config maps them to tokens);
    nothing for a model without language tokens."""
    config = getattr(model, "generation_config", None)
    if language is None or not getattr(config, "lang_to_id", None):
        return {}
    return {"language": language, "task": task}


@torch.no_grad()
def transcribe(model, features: torch.Tensor, tokenizer, max_new_tokens: int, options: dict) -> list[str]:
    """Greedy transcripts of one batch of input features, special tokens (language, task) removed."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        tokens = model.generate(
            input_features=features.to(device, dtype=next(model.parameters()).dtype),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **options,
        )
    finally:
        model.train(was_training)
    sequences = tokens.sequences if hasattr(tokens, "sequences") else tokens
    return [text.strip() for text in tokenizer.batch_decode(sequences, skip_special_tokens=True)]


@torch.no_grad()
def teacher_forced_loss(model, batches) -> dict:
    """Cross-entropy per transcript token over `batches` (collated: input_features, labels), summed then divided by
    the token count, so short transcripts weigh no more than their tokens."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            labels = batch["labels"].to(device)
            logits = model(input_features=batch["input_features"].to(device), labels=labels).logits
            total += torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            ).item()
            count += int(labels.ne(-100).sum())
    finally:
        model.train(was_training)
    return {"loss": round(total / max(count, 1), 6), "tokens": count}
