"""`tunesmith compare RUN1 RUN2 ...`: one page with every run's curves, headline numbers and differing settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.report import plots
from tunesmith.report.run_report import environment
from tunesmith.run_folder import RunFolder

HEADLINES = [
    ("status", "status"),
    ("global_step", "steps"),
    ("train_loss", "train loss (average)"),
    ("validation_loss_before", "validation loss before"),
    ("validation_loss_after", "validation loss after"),
    ("best_metric", "best metric"),
    ("validation.accuracy", "validation accuracy"),
    ("validation.f1_macro", "validation macro-F1"),
    ("forgetting.drift_percent", "forgetting drift %"),
    ("tokens_per_second", "real tokens/s"),
    ("examples_per_second", "examples/s"),
    ("train_seconds", "training seconds"),
    ("peak_memory_mb", "peak memory MB"),
    ("plan.budget_seconds", "time budget s (plan)"),
    ("plan.predicted_seconds", "predicted time s (plan)"),
    ("plan.actual_seconds", "actual time s"),
    ("plan.predicted_peak_memory_mb", "predicted peak memory MB (plan)"),
    ("parameters.trainable", "trainable parameters"),
]


def _lookup(summary: dict, dotted: str):
    value = summary
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_settings(configs: list[dict]) -> list[tuple[str, list]]:
    """Config keys whose values are not the same in every run (the run's own name and folder left out)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat) - {"output.name", "output.dir"})
    return [(key, [f.get(key) for f in flat]) for key in keys if len({repr(f.get(key)) for f in flat}) > 1]


def write_comparison(runs: list[RunFolder], output: str | Path | None = None) -> Path:
    if len(runs) < 2:
        raise TunesmithError("compare: give at least two run folders")
    names = [
        r.path.name if [x.path.name for x in runs].count(r.path.name) == 1 else str(r.path) for r in runs
    ]
    summaries = [r.read_summary().to_dict() for r in runs]
    curves = [(name, r.read_metrics()) for name, r in zip(names, runs, strict=True)]
    figures = {
        "plot-validation-loss": plots.overlaid_curves(curves, "eval_loss", "validation loss"),
        "plot-train-loss": plots.overlaid_curves(curves, "loss", "training loss"),
        "plot-accuracy": plots.overlaid_curves(curves, "eval_accuracy", "validation accuracy"),
    }
    figures = {key: uri for key, uri in figures.items() if uri}
    headlines = [
        (label, [_lookup(s, key) for s in summaries])
        for key, label in HEADLINES
        if any(_lookup(s, key) is not None for s in summaries)
    ]
    target = Path(output) if output else runs[0].path.parent / "comparison.html"
    if (
        target.exists()
        and target.read_text(encoding="utf-8", errors="replace").find("tunesmith comparison") < 0
    ):
        raise TunesmithError(f"{target} exists and is not a tunesmith comparison; choose another --output")
    page = (
        environment()
        .get_template("compare.html.j2")
        .render(
            names=names,
            paths=[str(r.path) for r in runs],
            created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            headlines=headlines,
            settings=differing_settings([r.load_config().model_dump(mode="json") for r in runs]),
            figures=figures,
        )
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target
