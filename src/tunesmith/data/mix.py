"""data.mix and data.replay: more training sources drawn into every epoch at stated shares, seeded and counted.

Each epoch holds all of train_file's training rows and, per extra source, a fixed number of rows drawn from it
(without repeats while the source lasts); the trainer's seeded shuffle interleaves them, so every batch holds each
source's share in expectation. Extra rows never come from, or repeat, the validation or test split: those stay
the task's own data, so validation loss and test figures mean what they meant without mixing."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from tunesmith.config import DataConfig
from tunesmith.data.readers import read_rows
from tunesmith.data.validate import Example, detect_format, validate_rows
from tunesmith.errors import TunesmithError

REPLAY = "replay"


def read_source(path: str, cfg: DataConfig, key: str) -> tuple[list[Example], list[str]]:
    """A mix or replay file as examples: a .txt file one text per non-empty line, else rows in any format
    tunesmith reads (detected per file); and one 'file:line: reason' per bad row."""
    source = Path(path)
    if source.suffix.lower() == ".txt":
        if not source.is_file():
            raise TunesmithError(
                f"{key}: {source} not found; give a .txt file (one text per line) or a table"
            )
        lines = source.read_text(encoding="utf-8").splitlines()
        examples = [
            Example(f"{source}:{number}", text=line.strip())
            for number, line in enumerate(lines, 1)
            if line.strip()
        ]
        return examples, []
    if not source.is_file():
        raise TunesmithError(
            f"{key}: {source} not found; give a data file (.jsonl, .json, .csv, .parquet, .txt)"
        )
    rows = read_rows(source)
    # The mix file's own format, with the same field names and system prompt as train_file.
    return validate_rows(rows, cfg, detect_format(rows, cfg.model_copy(update={"format": "auto"})))


def read_sources(cfg: DataConfig) -> tuple[dict[str, list[Example]], list[str]]:
    """Every data.mix file, and data.replay's file where it names one, validated row by row."""
    pools: dict[str, list[Example]] = {}
    problems: list[str] = []
    for index, source in enumerate(cfg.mix):
        examples, bad = read_source(source.file, cfg, f"data.mix[{index}].file")
        pools[source.file] = examples
        problems += bad
    if cfg.replay is not None and cfg.replay.source != "self":
        examples, bad = read_source(cfg.replay.source, cfg, "data.replay.source")
        pools[REPLAY] = examples
        problems += bad
    for name, examples in pools.items():
        if not examples:
            where = "data.replay.source" if name == REPLAY else "data.mix"
            raise TunesmithError(
                f"{where}: {name if name != REPLAY else cfg.replay.source} has no usable rows"
            )
    return pools, problems


def epoch_counts(task_rows: int, cfg: DataConfig, pools: dict[str, list[Example]]) -> dict[str, int]:
    """How many rows each extra source adds to an epoch of `task_rows` rows of train_file.

    data.mix: weight / train_weight times task_rows; data.replay: its share of the whole epoch (task rows and mix
    rows together with the replay rows)."""
    counts = {source.file: round(task_rows * source.weight / cfg.train_weight) for source in cfg.mix}
    if cfg.replay is not None and REPLAY in pools:
        mixed = task_rows + sum(counts.values())
        counts[REPLAY] = max(1, round(mixed * cfg.replay.share / (1 - cfg.replay.share)))
    return counts


def planned(checked, cfg: DataConfig) -> dict:
    """What `tunesmith data check` says of data.mix and data.replay: each source's pool and rows per epoch
    (self-replay's rows are the base model's answers, generated when training starts)."""
    pools = dict(checked.sources)
    if cfg.replay is not None and cfg.replay.source == "self":
        pools[REPLAY] = []  # generated at training start; only its count is planned here
    counts = epoch_counts(len(checked.train), cfg, pools)
    total = len(checked.train) + sum(counts.values())
    return {
        "task_rows_per_epoch": len(checked.train),
        "rows_per_epoch": total,
        "sources": [
            {
                "source": name if name != REPLAY else f"replay: {cfg.replay.source}",
                "pool": len(pools[name])
                if name != REPLAY or cfg.replay.source != "self"
                else "generated at training",
                "rows_per_epoch": count,
                "share": round(count / total, 4),
            }
            for name, count in counts.items()
        ],
    }


def draw(pool: list[Example], count: int, seed: int) -> tuple[list[Example], int]:
    """`count` examples from `pool` in a seeded order, each used once before any repeats; and the repeats."""
    rng = random.Random(seed)
    drawn: list[Example] = []
    while len(drawn) < count:
        order = list(pool)
        rng.shuffle(order)
        drawn += order[: count - len(drawn)]
    return drawn, max(0, count - len(pool))


def mix_train(checked, cfg: DataConfig, pools: dict[str, list[Example]]):
    """`checked` (data.prepare.CheckedData) with each extra source's rows added to train, and report['mix']."""
    if not pools:
        return checked
    held_out = {example.key for example in checked.validation + checked.test}
    counts = epoch_counts(len(checked.train), cfg, pools)
    extra: list[Example] = []
    sources = []
    for index, (name, pool) in enumerate(pools.items()):
        usable = [example for example in pool if example.key not in held_out]
        drawn, repeats = draw(usable, counts[name], cfg.seed + index) if usable else ([], 0)
        # A repeated row is the same example twice: tag it so deduplication and caching see distinct rows.
        extra += [
            replace(example, where=f"{example.where} ({name if name != REPLAY else 'replay'})")
            for example in drawn
        ]
        sources.append(
            {
                "source": name if name != REPLAY else f"replay: {cfg.replay.source}",
                "pool": len(pool),
                "held_out_overlap_removed": len(pool) - len(usable),
                "rows_per_epoch": len(drawn),
                "repeats_per_epoch": repeats,
            }
        )
    total = len(checked.train) + len(extra)
    report = {
        "task_rows_per_epoch": len(checked.train),
        "rows_per_epoch": total,
        "task_share": round(len(checked.train) / total, 4),
        "sources": [source | {"share": round(source["rows_per_epoch"] / total, 4)} for source in sources],
        "how": "every epoch: all task rows plus the drawn rows, shuffled together by the trainer (seeded)",
    }
    checked.report["mix"] = report
    checked.report["train_examples"] = total
    return replace(checked, train=checked.train + extra)


def describe(report: dict) -> str:
    """One line for the console: each source's rows and share of an epoch."""
    parts = [f"{report['task_rows_per_epoch']} task rows ({100 * report['task_share']:.1f}%)"]
    for source in report["sources"]:
        repeats = f", {source['repeats_per_epoch']} repeated" if source["repeats_per_epoch"] else ""
        parts.append(
            f"{source['rows_per_epoch']} from {source['source']} ({100 * source['share']:.1f}%{repeats})"
        )
    return "data: each epoch mixes " + " + ".join(parts)


def supervised_token_shares(mix: dict, train_rows: list[dict], ignore: int) -> dict:
    """Each source's share of an epoch's supervised (loss-bearing) tokens: what the loss actually weighs, which
    differs from the row share when rows differ in answer length. `train_rows` are tokenized in mix order (task rows
    first, then each source's); where max_length dropped rows that order is lost, and the shares are not given."""
    expected = mix["task_rows_per_epoch"] + sum(source["rows_per_epoch"] for source in mix["sources"])
    if len(train_rows) != expected:
        return {"not_counted": f"{expected - len(train_rows)} rows were dropped for length"}
    counts, start = [], 0
    for rows in [mix["task_rows_per_epoch"]] + [source["rows_per_epoch"] for source in mix["sources"]]:
        counts.append(
            sum(label != ignore for row in train_rows[start : start + rows] for label in row["labels"])
        )
        start += rows
    total = sum(counts) or 1
    names = ["task"] + [source["source"] for source in mix["sources"]]
    return {name: round(count / total, 4) for name, count in zip(names, counts, strict=True)}
