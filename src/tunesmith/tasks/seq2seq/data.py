"""Text-to-text data: tables of source and target, validated row by row, split, tokenized and padded.

Sources and targets longer than data.max_length / seq2seq.max_target_length are dropped or cut (data.on_overflow),
and counted either way in the data report; a cut keeps the end-of-sequence token, so the model still learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from tunesmith.config import DataConfig
from tunesmith.data.collate import IGNORE
from tunesmith.data.prepare import (
    CheckedData,
    _length_stats,
    _split,
    read_splits,
    rows_report,
    three_splits,
)
from tunesmith.data.readers import Row, read_rows
from tunesmith.errors import TunesmithError
from tunesmith.tasks.seq2seq.settings import Seq2SeqConfig


@dataclass(frozen=True)
class SourceTarget:
    """One example: the text the model reads and the text it should write."""

    where: str
    source: str
    target: str

    @property
    def key(self) -> tuple:
        return (self.source, self.target)

    def token_count(self, renderer) -> int:
        """The source's tokens, checked against data.max_length (targets: the training data report)."""
        return len(renderer.tokenizer(self.source)["input_ids"])


def _field(row: Row, name: str, setting: str) -> tuple[str | None, str | None]:
    """(text, problem): a missing field names the setting that chooses it."""
    data = row.data
    if name not in data:
        present = ", ".join(sorted(data)) or "none"
        return None, (
            f"missing field '{name}' (fields present: {present}); rename the column or set seq2seq.{setting}"
        )
    value = data[name]
    if value is None:
        return None, f"field '{name}' is null; give it a text or remove the row"
    if not isinstance(value, str):
        return None, f"field '{name}' must be a string, got {type(value).__name__}"
    if not value.strip():
        return None, f"field '{name}' is empty; give it a text or remove the row"
    return value, None


def validate_pairs(rows: list[Row], settings: Seq2SeqConfig) -> tuple[list[SourceTarget], list[str]]:
    """Every row becomes a SourceTarget or a problem naming its file:line, the field and the fix."""
    examples, problems = [], []
    for row in rows:
        if row.error is not None or row.data is None:
            problems.append(f"{row.where}: {row.error or 'unreadable row'}")
            continue
        source, problem = _field(row, settings.source_field, "source_field")
        if problem is None:
            target, problem = _field(row, settings.target_field, "target_field")
        if problem is not None:
            problems.append(f"{row.where}: {problem}")
            continue
        examples.append(SourceTarget(row.where, source, target))
    return examples, problems


def read_sources(path: str, settings: Seq2SeqConfig) -> tuple[list[SourceTarget], list[str]]:
    """Inputs to predict: rows with a source (a target, when present, is kept as the reference)."""
    examples, problems = [], []
    for row in read_rows(path):
        if row.error is not None or row.data is None:
            problems.append(f"{row.where}: {row.error or 'unreadable row'}")
            continue
        source, problem = _field(row, settings.source_field, "source_field")
        if problem is not None:
            problems.append(f"{row.where}: {problem}")
            continue
        target = row.data.get(settings.target_field)
        examples.append(SourceTarget(row.where, source, target if isinstance(target, str) else ""))
    return examples, problems


def check_pairs(cfg: DataConfig, settings: Seq2SeqConfig) -> CheckedData:
    """Read and validate every file; split test, then validation, exactly as the other tasks do."""
    validate = partial(validate_pairs, settings=settings)
    train, validation, test, problems, read = read_splits(cfg, read_rows(cfg.train_file), validate)
    report = rows_report(cfg, "source_target", problems, read)
    report["fields"] = {"source": settings.source_field, "target": settings.target_field}
    if problems and cfg.on_error == "stop":
        return CheckedData([], [], report, problems)
    held_out = f"{cfg.validation_ratio:g} of {cfg.train_file} held out (seed {cfg.seed})"
    train, validation, test = three_splits(train, validation, test, cfg, report, _split, held_out)
    return CheckedData(train, validation, report, problems, test)


class SourceEncoder:
    """Turns sources and targets into token ids the way training did (the seq2seq counterpart of the causal-LM
    Renderer: serving and `generate` call encode_prompt and stop_token_ids on it)."""

    kind = "source-target"  # recorded as run.json template: how prompts become model inputs

    def __init__(self, tokenizer, prefix: str = ""):
        self.tokenizer, self.prefix = tokenizer, prefix
        if tokenizer.eos_token_id is None:
            raise TunesmithError(
                "model.name: the tokenizer has no end-of-sequence token; a seq2seq model needs one to stop"
            )

    def _ended(self, ids: list[int]) -> list[int]:
        # T5/BART tokenizers end every text with EOS; a tokenizer that does not gets it added here.
        return ids if ids and ids[-1] == self.tokenizer.eos_token_id else [*ids, self.tokenizer.eos_token_id]

    def encode_source(self, text: str) -> list[int]:
        return self._ended(self.tokenizer(self.prefix + text)["input_ids"])

    def encode_target(self, text: str) -> list[int]:
        # text_target: tokenizers with target-side special tokens (mBART, NLLB language codes) apply them
        return self._ended(self.tokenizer(text_target=text)["input_ids"])

    def encode_prompt(self, conversation) -> list[int]:
        """A served request's source: the last user message (a seq2seq model reads one text, not a dialogue)."""
        users = [text for role, text in conversation if role == "user"]
        return self.encode_source(users[-1] if users else "")

    def stop_token_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id]

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id


def _cut(ids: list[int], limit: int) -> list[int]:
    """The first limit-1 tokens and the last one (EOS): a cut text still ends."""
    return ids if len(ids) <= limit else [*ids[: limit - 1], ids[-1]]


def tokenize_pairs(
    examples: list[SourceTarget], cfg: DataConfig, max_target_length: int, encoder: SourceEncoder
) -> tuple[list[dict], list[SourceTarget], dict]:
    """Rows of input_ids (source) and labels (target, ending in EOS), the examples kept (in row order), and the
    overflow report: over-long ones are dropped or cut, and counted."""
    rows, kept, long_sources, long_targets = [], [], [], []
    for example in examples:
        source, target = encoder.encode_source(example.source), encoder.encode_target(example.target)
        over_source, over_target = len(source) > cfg.max_length, len(target) > max_target_length
        if over_source:
            long_sources.append(f"{example.where}: source {len(source)} tokens")
        if over_target:
            long_targets.append(f"{example.where}: target {len(target)} tokens")
        if (over_source or over_target) and cfg.on_overflow == "drop":
            continue
        rows.append({"input_ids": _cut(source, cfg.max_length), "labels": _cut(target, max_target_length)})
        kept.append(example)
    action = "drop" if cfg.on_overflow == "drop" else "truncate"
    report = {
        "sources": {"max_length": cfg.max_length, "action": action, "count": len(long_sources)},
        "targets": {"max_length": max_target_length, "action": action, "count": len(long_targets)},
        "list": (long_sources + long_targets)[:50],
    }
    return rows, kept, report


def length_report(rows: list[dict], eos_id: int) -> dict:
    """Source lengths (histogram), target tokens, and how many labels end in EOS."""
    stats = _length_stats(rows)
    stats["target_tokens"] = stats.pop("supervised_tokens", 0)
    stats["eos_in_labels"] = sum(bool(row["labels"]) and row["labels"][-1] == eos_id for row in rows)
    return stats


class Seq2SeqCollator:
    """Pads sources with the pad id (attention_mask 0) and targets with -100, each batch to its own longest row;
    the model builds decoder inputs from the labels (shifted right, -100 read as padding)."""

    unit = "tok"

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.real_tokens = 0  # source and target tokens handed to the model so far (for tokens/s)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        source_width = max(len(f["input_ids"]) for f in features)
        target_width = max(len(f["labels"]) for f in features)
        input_ids = torch.full((len(features), source_width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), source_width), dtype=torch.long)
        labels = torch.full((len(features), target_width), IGNORE, dtype=torch.long)
        for row, feature in enumerate(features):
            source, target = feature["input_ids"], feature["labels"]
            input_ids[row, : len(source)] = torch.tensor(source)
            attention_mask[row, : len(source)] = 1
            labels[row, : len(target)] = torch.tensor(target)
            self.real_tokens += len(source) + len(target)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
