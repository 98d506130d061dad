"""The sweep report: one self-contained HTML page with the trials table, the history and the importances."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

from tunesmith.report.figures import data_uri, figure

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
tr.best td { background: #eef7ee; font-weight: 600; }
td.error { color: #a33; font-size: 0.8rem; }
img { max-width: 100%; }
"""


def write_sweep_report(
    path: Path,
    study: str,
    metric: str,
    direction: str,
    trials: list[dict],
    importances: dict[str, float],
    importance_note: str | None,
) -> Path:
    """Write the page; `trials` are the trials.json records, `importance_note` says why importances are missing."""
    best = best_record(trials, direction)
    counts: dict[str, int] = {}
    for record in trials:
        counts[record["state"]] = counts.get(record["state"], 0) + 1
    states = ", ".join(f"{count} {state.lower()}" for state, count in sorted(counts.items()))
    headline = (
        f"Best: trial {best['number']}, {metric} = {_number(best['value'])}."
        if best
        else "No trial has completed yet."
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_escape(f"Sweep {study}")}</title>
<style>{STYLE}</style></head><body>
<h1>{_escape(f"Sweep {study}")}</h1>
<p>{_escape(f"{len(trials)} trials ({states or 'none'}); objective: {direction} {metric}. {headline}")}</p>
<h2>Optimization history</h2>
{_history_image(trials, metric, direction)}
<h2>Parameter importances</h2>
{_importance_section(importances, importance_note)}
<h2>Trials</h2>
{_trials_table(trials, metric, best)}
</body></html>
"""
    # Workers finishing together each write their own temporary file: a reader never sees a mix of two.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)
    return path


def best_record(trials: list[dict], direction: str) -> dict | None:
    complete = [r for r in trials if r["state"] == "COMPLETE" and _finite(r["value"])]
    if not complete:
        return None
    sign = 1 if direction == "minimize" else -1
    return min(complete, key=lambda r: (sign * r["value"], r["number"]))


def _history_image(trials: list[dict], metric: str, direction: str) -> str:
    complete = [r for r in trials if r["state"] == "COMPLETE" and _finite(r["value"])]
    pruned = [r for r in trials if r["state"] == "PRUNED" and _finite(r["value"])]
    if not complete and not pruned:
        return "<p>No trial has a value yet, so there is no history to plot.</p>"
    pick = min if direction == "minimize" else max
    best_so_far, running = [], None
    for record in complete:
        running = record["value"] if running is None else pick(running, record["value"])
        best_so_far.append(running)
    with figure() as (fig, axes):
        if complete:
            axes.scatter(
                [r["number"] for r in complete], [r["value"] for r in complete], label="complete", zorder=3
            )
            # The line runs to the last trial: later pruned or failed trials did not beat it.
            last = max(r["number"] for r in trials)
            axes.step(
                [r["number"] for r in complete] + [last],
                best_so_far + best_so_far[-1:],
                where="post",
                color="C2",
                label="best so far",
            )
        if pruned:
            # A pruned trial's value is its last reported evaluation, before it was stopped.
            axes.scatter(
                [r["number"] for r in pruned],
                [r["value"] for r in pruned],
                marker="x",
                color="grey",
                label="pruned (last evaluation)",
                zorder=3,
            )
        axes.set_xlabel("trial")
        axes.set_ylabel(metric)
        axes.legend()
        uri = data_uri(fig)
    alt = f"{metric} of each trial by trial number, with the best value so far as a line"
    return f'<img id="optimization-history" src="{uri}" alt="{_escape(alt)}">'


def _importance_section(importances: dict[str, float], note: str | None) -> str:
    if not importances:
        return f"<p>{_escape(note or 'Parameter importances are not available.')}</p>"
    names = list(importances)[::-1]  # largest on top
    with figure(height=max(1.6, 0.5 * len(names) + 1)) as (fig, axes):
        axes.barh(names, [importances[name] for name in names])
        axes.set_xlabel("importance (fANOVA, share of the objective's variance)")
        uri = data_uri(fig)
    alt = "Parameter importances: " + ", ".join(f"{name} {value:.2f}" for name, value in importances.items())
    return f'<img id="param-importances" src="{uri}" alt="{_escape(alt)}">'


def _trials_table(trials: list[dict], metric: str, best: dict | None) -> str:
    if not trials:
        return "<p>No trials yet.</p>"
    names = list(dict.fromkeys(name for record in trials for name in record["params"]))
    header = "".join(
        f"<th>{_escape(h)}</th>" for h in ["trial", "state", metric, *names, "seconds", "run folder"]
    )
    rows = []
    for record in trials:
        cells = [
            str(record["number"]),
            record["state"].lower(),
            _number(record["value"]),
            *(_number(record["params"].get(name)) for name in names),
            _number(record.get("duration_seconds")),
            record.get("run_dir") or "",
        ]
        row_class = ' class="best"' if best and record["number"] == best["number"] else ""
        row = "".join(f"<td>{_escape(cell)}</td>" for cell in cells)
        note = _note(record)
        rows.append(f'<tr{row_class}>{row}<td class="error">{_escape(note)}</td></tr>')
    return f"<table><tr>{header}<th></th></tr>{''.join(rows)}</table>"


def _note(record: dict) -> str:
    notes = []
    if record.get("retry_of") is not None:
        notes.append(f"retry of trial {record['retry_of']}")
    if record.get("retried_as") is not None:
        notes.append(f"stopped before it finished; retried as trial {record['retried_as']}")
    elif record.get("error"):
        notes.append(record["error"])
    if record.get("pruned_at_step") is not None:
        notes.append(f"pruned at step {record['pruned_at_step']}")
    return "; ".join(notes)


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _escape(text: str) -> str:
    return html.escape(str(text), quote=True)
