"""The data pipeline: read -> validate -> deduplicate -> split -> tokenize (cached) -> report."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import zipfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from tunesmith.config import AUTO_TEST_MIN_ROWS, AUTO_TEST_RATIO, DataConfig
from tunesmith.console import say
from tunesmith.data.collate import IGNORE
from tunesmith.data.conversation import uses_agent_features
from tunesmith.data.mix import read_sources
from tunesmith.data.readers import read_rows
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.data.validate import Example, detect_format, validate_rows
from tunesmith.errors import TunesmithError

CACHE_VERSION = "2"  # bump when tokenization logic changes, so old caches are never reused


@dataclass
class CheckedData:
    """Valid examples split into train/validation, plus what happened to the rest."""

    train: list[Example]
    validation: list[Example]
    report: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    test: list = field(
        default_factory=list
    )  # scored once at the end; training and model selection never read it
    # data.mix's files and data.replay's file (data/mix.py), read and validated; drawn into train by mix_train
    sources: dict = field(default_factory=dict)


def check_data(cfg: DataConfig) -> CheckedData:
    """Read and validate every row; raise (listing all bad rows) unless on_error is skip."""
    rows = read_rows(cfg.train_file)
    fmt = detect_format(rows, cfg)
    train, validation, test, problems, read = read_splits(cfg, rows, partial(validate_rows, cfg=cfg, fmt=fmt))
    sources, source_problems = read_sources(cfg)
    problems += source_problems
    report = rows_report(cfg, fmt, problems, read)
    if problems and cfg.on_error == "stop":
        return CheckedData([], [], report, problems)
    held_out = f"{cfg.validation_ratio:g} of {cfg.train_file} held out (seed {cfg.seed})"
    train, validation, test = three_splits(train, validation, test, cfg, report, _split, held_out)
    return CheckedData(train, validation, report, problems, test, sources)


def read_splits(cfg: DataConfig, train_rows: list, validate) -> tuple[list, list, list, list[str], int]:
    """Every file's valid examples (train from `train_rows`, validation and test from their files where given),
    every bad row's 'file:line: reason', and the rows read; `validate(rows) -> (examples, problems)`."""
    train, problems = validate(train_rows)
    read = len(train_rows)
    validation: list = []
    test: list = []
    for path, split in ((cfg.validation_file, validation), (cfg.test_file, test)):
        if path:
            rows = read_rows(path)
            examples, more = validate(rows)
            split.extend(examples)
            problems += more
            read += len(rows)
    return train, validation, test, problems, read


def rows_report(cfg: DataConfig, fmt: str, problems: list[str], read: int) -> dict:
    """The data report's first fields: the files, their format, the rows read and the bad ones."""
    return {
        "train_file": cfg.train_file,
        "validation_file": cfg.validation_file,
        "format": fmt,
        "rows_read": read,
        "bad_rows": len(problems),
        "bad_row_list": problems[:200],
        "on_error": cfg.on_error,
    }


def three_splits(
    train: list, validation: list, test: list, cfg: DataConfig, report: dict, split, held_out: str
):
    """Train, validation and test as every task makes them: test held out first, then validation split off and
    cleaned, then test rows that repeat a seen one dropped (each step counted in `report`)."""
    train, test = hold_out_test(train, test, cfg, report, split)
    train, validation = clean_and_split(train, validation, cfg, report, split, held_out)
    return train, validation, drop_test_overlap(test, train + validation, cfg, report)


def hold_out_test(train: list, test: list, cfg: DataConfig, report: dict, split) -> tuple[list, list]:
    """The test split, from data.test_file or held out of train (seeded, by the task's `split`) before
    validation is split off, so that choosing checkpoints and settings on validation never sees it."""
    if cfg.test_file:
        report["test_split"] = f"test from {cfg.test_file}"
        return train, test
    ratio, reason = test_ratio_for(cfg, len(train))
    report["test_ratio"] = ratio
    if reason:
        report["test_ratio_auto"] = reason
    if ratio > 0:
        train, test = split(train, ratio, cfg.seed)
        report["test_split"] = f"{ratio:g} of {cfg.train_file} held out for testing (seed {cfg.seed})"
    else:
        report["test_split"] = "no test split"
    if reason:  # the user did not choose: say what was chosen and how to change it
        say(f"data: {describe_auto_test_split(ratio, reason)}")
    return train, test


def test_ratio_for(cfg: DataConfig, rows: int) -> tuple[float, str | None]:
    """data.test_ratio as a number for `rows` valid training rows, and why where `auto` chose it (else None)."""
    if cfg.test_ratio != "auto":
        return cfg.test_ratio, None
    if rows >= AUTO_TEST_MIN_ROWS:
        return AUTO_TEST_RATIO, f"auto: {rows} rows >= {AUTO_TEST_MIN_ROWS}"
    return 0.0, f"auto: {rows} rows < {AUTO_TEST_MIN_ROWS}"


def describe_auto_test_split(ratio: float, reason: str) -> str:
    if ratio > 0:
        return (
            f"test split: {100 * ratio:g}% of train_file held out ({reason}), scored once at the end; "
            "data.test_ratio: 0 turns it off"
        )
    return f"no test split ({reason}): figures are on validation; data.test_ratio: 0.1 holds one out"


def drop_test_overlap(test: list, seen: list, cfg: DataConfig, report: dict) -> list:
    """Test examples that repeat each other or a train/validation example are dropped (counted)."""
    if not test and not cfg.test_file:
        return []
    test, duplicates = deduplicate(test) if cfg.deduplicate else (test, [])
    keys = {example.key for example in seen}
    kept = [example for example in test if example.key not in keys]
    report["test_overlap_removed"] = len(test) - len(kept) + len(duplicates)
    report["test_examples"] = len(kept)
    return kept


def build_renderer(tokenizer, cfg: DataConfig, checked: CheckedData) -> Renderer:
    """The training renderer: under template auto, tunesmith's tools template when the data has tools, calls or
    reasoning and the model's own template cannot show them (docs/tools.md)."""
    examples = [*checked.train, *checked.validation, *checked.test]
    tools = any(isinstance(e, Example) and uses_agent_features(e.messages, e.tools) for e in examples)
    renderer = Renderer(tokenizer, cfg.template, tools=tools, reasoning_history=cfg.reasoning_history)
    if renderer.tools_template and cfg.template == "auto":
        say(
            "data: tools, tool calls or reasoning rendered with tunesmith's tools template (ChatML + <tool_call>), "
            "as the model's own chat template cannot show them (docs/tools.md)"
        )
    return renderer


def tokenize_examples(examples: list, cfg: DataConfig, renderer: Renderer) -> tuple[list[dict], dict]:
    """Tokenize a few examples (the test split) with the training settings; max_length applied and counted."""
    return _fit([encode(e, renderer, LossMask.of(cfg)) for e in examples], examples, cfg)


def clean_and_split(train: list, validation: list, cfg: DataConfig, report: dict, split, held_out: str):
    """Deduplicate, split off validation (without a validation file), cap, drop train/validation overlap.

    Every step is counted in `report`; `split(examples, ratio, seed)` is the task's way of holding out.
    """
    train, train_dupes = deduplicate(train) if cfg.deduplicate else (train, [])
    validation, val_dupes = deduplicate(validation) if cfg.deduplicate else (validation, [])
    report["duplicates_removed"] = len(train_dupes) + len(val_dupes)
    report["duplicate_list"] = (train_dupes + val_dupes)[:50]
    if not cfg.validation_file and cfg.validation_ratio > 0:
        train, validation = split(train, cfg.validation_ratio, cfg.seed)
        report["split"] = held_out
    else:
        report["split"] = (
            f"validation from {cfg.validation_file}" if cfg.validation_file else "no validation set"
        )
    if cfg.max_examples:
        report["max_examples"] = cfg.max_examples
        train = train[: cfg.max_examples]
    if not train:
        raise TunesmithError(f"{cfg.train_file}: no valid training examples left; see the data report")
    # A leak from train into validation makes validation loss lie.
    train_keys = {example.key for example in train}
    leaked = [example for example in validation if example.key in train_keys]
    validation = [example for example in validation if example.key not in train_keys]
    report["validation_overlap_removed"] = len(leaked)
    report["train_examples"] = len(train)
    report["validation_examples"] = len(validation)
    return train, validation


def deduplicate(examples: list[Example]) -> tuple[list[Example], list[str]]:
    seen: dict[tuple, str] = {}
    kept, dropped = [], []
    for example in examples:
        if example.key in seen:
            dropped.append(f"{example.where}: duplicate of {seen[example.key]}")
        else:
            seen[example.key] = example.where
            kept.append(example)
    return kept, dropped


def _split(examples: list[Example], ratio: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * ratio)) if len(examples) > 1 else 0
    val_index = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_index]
    validation = [e for i, e in enumerate(examples) if i in val_index]
    return train, validation


# -- tokenization -------------------------------------------------------------------------------


def encode(example: Example, renderer: Renderer, mask: LossMask) -> dict:
    if example.text is not None:
        ids = renderer.encode_text(example.text)
        trained = [True] * len(ids)
    else:
        ids, trained = renderer.encode_conversation(example.messages, example.tools, mask)
    return {"input_ids": ids, "labels": [t if keep else IGNORE for t, keep in zip(ids, trained, strict=True)]}


def _fit(encoded: list[dict], examples: list[Example], cfg: DataConfig) -> tuple[list[dict], dict]:
    """Apply max_length: truncate or drop, and count every case."""
    kept, over, emptied, unlearned = [], [], [], []
    for item, example in zip(encoded, examples, strict=True):
        truncated = len(item["input_ids"]) > cfg.max_length
        if truncated:
            over.append(f"{example.where}: {len(item['input_ids'])} tokens")
            if cfg.on_overflow == "drop":
                continue
            item = {key: value[: cfg.max_length] for key, value in item.items()}
        if all(label == IGNORE for label in item["labels"]):
            # cut before its answer, or nothing learned at all (data.train_turns: last on a turn with train: false)
            (emptied if truncated else unlearned).append(example.where)
            continue
        kept.append(item)
    return kept, {
        "max_length": cfg.max_length,
        "action": cfg.on_overflow,
        "count": len(over),
        "list": over[:50],
        "dropped_with_no_answer_left": len(emptied),
        "dropped_with_nothing_to_learn": len(unlearned),
    }


def _length_stats(items: list[dict]) -> dict:
    if not items:
        return {"examples": 0}
    lengths = np.array([len(item["input_ids"]) for item in items])
    supervised = sum(sum(label != IGNORE for label in item["labels"]) for item in items)
    return {
        "examples": len(items),
        "tokens": int(lengths.sum()),
        "supervised_tokens": int(supervised),
        "min": int(lengths.min()),
        "mean": round(float(lengths.mean()), 1),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        **dict(zip(("histogram", "histogram_edges"), _histogram(lengths), strict=True)),
    }


def _histogram(lengths: np.ndarray) -> tuple[list[int], list[float]]:
    counts, edges = np.histogram(lengths, bins=min(20, len(lengths)))
    return counts.tolist(), [round(float(edge), 2) for edge in edges]


def _eos_in_labels(items: list[dict], stop_ids: list[int]) -> dict:
    with_eos = sum(any(label in stop_ids for label in item["labels"] if label != IGNORE) for item in items)
    return {"count": with_eos, "of": len(items)}


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    payload += (
        str(getattr(tokenizer, "chat_template", "")) + str(tokenizer.eos_token) + str(tokenizer.bos_token)
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _cache_key(checked: CheckedData, cfg: DataConfig, renderer: Renderer) -> str:
    digest = hashlib.sha256()
    settings = [CACHE_VERSION, renderer.kind, cfg.max_length, cfg.on_overflow, cfg.loss_on]
    if (cfg.train_turns, cfg.train_reasoning, cfg.reasoning_history) != ("all", True, "drop"):
        settings += [cfg.train_turns, cfg.train_reasoning, cfg.reasoning_history]  # defaults: keys as before
    digest.update(json.dumps(settings).encode())
    digest.update(tokenizer_fingerprint(renderer.tokenizer).encode())
    for split in (checked.train, checked.validation):
        digest.update(b"|split|")
        for example in split:
            digest.update(json.dumps(example.key).encode())
    return digest.hexdigest()[:24]


def _save(path: Path, splits: dict[str, list[dict]], meta: dict) -> None:
    arrays = {}
    for name, items in splits.items():
        arrays[f"{name}_ids"] = np.array([t for item in items for t in item["input_ids"]], dtype=np.int64)
        arrays[f"{name}_labels"] = np.array([t for item in items for t in item["labels"]], dtype=np.int64)
        arrays[f"{name}_offsets"] = np.cumsum([0] + [len(item["input_ids"]) for item in items]).astype(
            np.int64
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique temporary names (ranks may write the same key at once); the .npz lands last, as the commit.
    meta_temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.json")
    meta_temporary.write_text(json.dumps(meta))
    meta_temporary.replace(path.with_suffix(".json"))
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(temporary, **arrays)
    temporary.replace(path)


def _load(path: Path, names: list[str]) -> tuple[dict[str, list[dict]], dict]:
    with np.load(path, allow_pickle=False) as arrays:
        splits = {}
        for name in names:
            ids, labels, offsets = arrays[f"{name}_ids"], arrays[f"{name}_labels"], arrays[f"{name}_offsets"]
            splits[name] = [
                {"input_ids": ids[a:b].tolist(), "labels": labels[a:b].tolist()}
                for a, b in zip(offsets[:-1], offsets[1:], strict=True)
            ]
    return splits, json.loads(path.with_suffix(".json").read_text())


def tokenize_data(checked: CheckedData, cfg: DataConfig, renderer: Renderer, cache_dir: Path | None) -> dict:
    """Tokenize both splits (or reuse a cache keyed by data, settings and tokenizer); return the splits and report."""
    key = _cache_key(checked, cfg, renderer)
    cache_file = cache_dir / "tokenized" / f"{key}.npz" if cache_dir else None
    if cache_file is None:
        return _tokenized(checked, cfg, renderer, key, None)
    # One process tokenizes and the others wait, then read its cache: once per node, or once in all when
    # the cache folder is on storage every node shares (flock is honoured by NFSv4 and Lustre).
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_file.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _tokenized(checked, cfg, renderer, key, cache_file)


def _tokenized(checked: CheckedData, cfg: DataConfig, renderer: Renderer, key: str, cache_file) -> dict:
    if cache_file is not None and cache_file.exists():
        try:
            splits, meta = _load(cache_file, ["train", "validation"])
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # cut short (the cache is not fsynced; a power cut can leave it so): tokenize again
        else:
            meta["cache"] = {"key": key, "hit": True}
            return {**splits, "report": meta}
    stop_ids = renderer.stop_token_ids()
    mask = LossMask.of(cfg)
    train_encoded = [encode(e, renderer, mask) for e in checked.train]
    val_encoded = [encode(e, renderer, mask) for e in checked.validation]
    train, train_over = _fit(train_encoded, checked.train, cfg)
    validation, val_over = _fit(val_encoded, checked.validation, cfg)
    meta = {
        "template": renderer.kind,
        "tools_template": renderer.tools_template,
        "loss_on": cfg.loss_on,
        "train_turns": cfg.train_turns,
        "train_reasoning": cfg.train_reasoning,
        "reasoning_history": cfg.reasoning_history,  # drop: earlier turns' reasoning is not rendered
        "over_max_length": {"train": train_over, "validation": val_over},
        "train_tokens": _length_stats(train),
        "validation_tokens": _length_stats(validation),
        "eos_in_labels": _eos_in_labels(train, stop_ids),
        "stop_token_ids": stop_ids,
    }
    if not train:
        raise TunesmithError(
            f"{cfg.train_file}: every training example is longer than data.max_length={cfg.max_length}; "
            "raise max_length or set data.on_overflow: truncate"
        )
    if cache_file is not None:
        _save(cache_file, {"train": train, "validation": validation}, meta)
    meta = {**meta, "cache": {"key": key, "hit": False}}
    return {"train": train, "validation": validation, "report": meta}


def bad_rows_error(checked) -> TunesmithError:
    shown = checked.problems[:100]
    more = len(checked.problems) - len(shown)
    details = [f"  {problem}" for problem in shown] + (
        [f"  ... and {more} more (all in the data report)"] if more else []
    )
    return TunesmithError(
        f"{len(checked.problems)} bad row(s); nothing was trained. Fix them, or set data.on_error: skip to drop them",
        details,
    )
