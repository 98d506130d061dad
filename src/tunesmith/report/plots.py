"""The run report's plots, each drawn from the run folder's own records and returned as a PNG data URI (and the
confusion matrix as the PNG file a classification run folder keeps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunesmith.report.figures import data_uri, figure


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every metrics.jsonl record that has `key`."""
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def loss_curves(records: list[dict], best_step: int | None, overfitting: dict | None) -> str | None:
    train_steps, train = series(records, "loss")
    eval_steps, evaluation = series(records, "eval_loss")
    if not train and not evaluation:
        return None
    with figure() as (fig, axes):
        if train:
            axes.plot(train_steps, train, label="train loss", color="tab:blue", alpha=0.8)
        if evaluation:
            axes.plot(eval_steps, evaluation, "o-", label="validation loss", color="tab:orange")
        if best_step is not None:
            axes.axvline(
                best_step, color="tab:green", linestyle="--", label=f"best checkpoint (step {best_step})"
            )
        if overfitting:
            axes.axvspan(
                overfitting["rising_since_step"],
                overfitting["detected_at_step"],
                color="tab:red",
                alpha=0.12,
                label="overfitting signal",
            )
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.set_title("training and validation loss")
        axes.legend()
        axes.grid(alpha=0.3)
        return data_uri(fig)


def learning_rate(records: list[dict]) -> str | None:
    steps, rates = series(records, "learning_rate")
    if not rates:
        return None
    with figure(7.0, 2.8) as (fig, axes):
        axes.plot(steps, rates, color="tab:purple")
        axes.set_xlabel("step")
        axes.set_ylabel("learning rate")
        axes.set_title("learning-rate schedule")
        axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        axes.grid(alpha=0.3)
        return data_uri(fig)


def evaluation_metrics(records: list[dict], names: list[str]) -> str | None:
    """Classification metrics (accuracy, macro-F1, ...) at each evaluation."""
    drawn = [(name, *series(records, f"eval_{name}")) for name in names]
    drawn = [entry for entry in drawn if entry[2]]
    if not drawn:
        return None
    with figure(7.0, 3.0) as (fig, axes):
        for name, steps, values in drawn:
            axes.plot(steps, values, "o-", label=name)
        axes.set_xlabel("step")
        axes.set_title("validation metrics")
        axes.legend()
        axes.grid(alpha=0.3)
        return data_uri(fig)


def throughput(records: list[dict]) -> str | None:
    for key, unit in (("tokens_per_second", "real tokens/s"), ("examples_per_second", "examples/s")):
        steps, values = series(records, key)
        if values:
            with figure(7.0, 2.8) as (fig, axes):
                axes.plot(steps, values, color="tab:gray")
                axes.set_xlabel("step")
                axes.set_ylabel(unit)
                axes.set_title(f"throughput ({unit}, running average)")
                axes.grid(alpha=0.3)
                return data_uri(fig)
    return None


def length_histogram(stats: dict, title: str) -> str | None:
    counts, edges = stats.get("histogram"), stats.get("histogram_edges")
    if not counts or not edges or len(edges) != len(counts) + 1:
        return None
    with figure(7.0, 2.8) as (fig, axes):
        axes.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:cyan", edgecolor="white")
        axes.set_xlabel("tokens per example")
        axes.set_ylabel("examples")
        axes.set_title(title)
        return data_uri(fig)


def class_counts(counts: dict[str, int], title: str) -> str | None:
    if not counts:
        return None
    with figure(7.0, 2.8) as (fig, axes):
        axes.bar(list(counts), list(counts.values()), color="tab:cyan")
        axes.set_ylabel("examples")
        axes.set_title(title)
        axes.tick_params(axis="x", rotation=30)
        return data_uri(fig)


def draw_confusion_matrix(fig, axes, matrix: list[list[int]], names: list[str]) -> None:
    """Counts on a blue scale, true label down, predicted across (the PNG file and the run report share it)."""
    values = np.asarray(matrix)
    image = axes.imshow(values, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = values.max() / 2 if values.size else 0
    for (row, column), count in np.ndenumerate(values):
        axes.text(
            column, row, str(count), ha="center", va="center", color="white" if count > threshold else "black"
        )
    fig.colorbar(image, ax=axes)


def confusion_figure_size(names: list[str]) -> tuple[float, float]:
    size = max(4.0, 0.6 * len(names) + 2)
    return size, size * 0.85


def confusion(matrix: list[list[int]], labels: list[str]) -> str | None:
    values = np.asarray(matrix)
    if values.ndim != 2 or not values.size:
        return None
    with figure(*confusion_figure_size(labels)) as (fig, axes):
        draw_confusion_matrix(fig, axes, matrix, labels)
        return data_uri(fig)


def write_confusion_png(matrix: list[list[int]], names: list[str], path: Path, title: str) -> None:
    """The confusion matrix as a PNG file beside evaluation.json (the same drawing as the report's)."""
    with figure(*confusion_figure_size(names)) as (fig, axes):
        draw_confusion_matrix(fig, axes, matrix, names)
        axes.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)


def overlaid_curves(runs: list[tuple[str, list[dict]]], key: str, title: str) -> str | None:
    """One line per run (the comparison page)."""
    drawn = [(name, *series(records, key)) for name, records in runs]
    drawn = [entry for entry in drawn if entry[2]]
    if not drawn:
        return None
    with figure() as (fig, axes):
        for name, steps, values in drawn:
            axes.plot(steps, values, "o-" if key.startswith("eval_") else "-", label=name, markersize=3)
        axes.set_xlabel("step")
        axes.set_ylabel(key)
        axes.set_title(title)
        axes.legend()
        axes.grid(alpha=0.3)
        return data_uri(fig)
