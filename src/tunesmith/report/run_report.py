"""RUN/report.html: one self-contained page that explains a run, built only from the run folder's files."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from tunesmith.report import plots
from tunesmith.run_folder import RunFolder
from tunesmith.training.checkpoints import checkpoint_step


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def best_step(summary: dict, records: list[dict], metric: str, greater: bool) -> int | None:
    """The best checkpoint's step (run.json), else the evaluation with the best train.metric."""
    if summary.best_checkpoint:
        return checkpoint_step(Path(summary.best_checkpoint))
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    steps, values = plots.series(records, key)
    if not values:
        return None
    pick = max if greater else min
    return steps[values.index(pick(values))]


def evaluation_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """The metrics table: one row per evaluation with every eval_* number (runtime columns left out)."""
    rows = [r for r in records if any(k.startswith("eval_") for k in r)]
    columns = sorted(
        {
            k
            for r in rows
            for k in r
            if k.startswith("eval_")
            and isinstance(r[k], (int, float))
            and "runtime" not in k
            and "per_second" not in k
        }
    )
    return columns, rows


def latest_evaluations(run: RunFolder) -> list[dict]:
    """Results of `tunesmith eval` on this run (RUN/eval/*/evaluation.json), newest first."""
    found = []
    for path in sorted((run.path / "eval").glob("*/evaluation.json")):
        result = _read_json(path)
        if result:
            found.append(result | {"folder": path.parent.name})
    return sorted(found, key=lambda r: r.get("created", ""), reverse=True)


def collect(run: RunFolder, task) -> dict:
    """Everything the page shows, read from the run folder; no number here comes from anywhere else."""
    cfg = run.load_config()
    summary = run.read_summary()
    records = run.read_metrics()
    data_report = _read_json(run.data_report) or {}
    evaluation = _read_json(run.path / "evaluation.json")
    metric = cfg.train.metric
    greater = cfg.train.greater_is_better
    if greater is None:
        greater = not metric.endswith("loss")
    best = best_step(summary, records, metric, greater)
    columns, evaluation_table = evaluation_rows(records)
    train_losses = plots.series(records, "loss")[1]
    figures = {
        "plot-loss": plots.loss_curves(records, best, summary.overfitting),
        "plot-lr": plots.learning_rate(records),
        "plot-throughput": plots.throughput(records),
    }
    figures |= task.report_figures(cfg, data_report, records, evaluation)
    figures = {key: uri for key, uri in figures.items() if uri}
    return {
        "name": run.path.name,
        "path": str(run.path),
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cfg": cfg,
        "config_text": run.config_file.read_text(encoding="utf-8"),
        "summary": summary.to_dict(),  # the template tests `is defined`: fields not reached are absent
        "data": data_report,
        "records": records,
        "figures": figures,
        "best_step": best,
        "metric": metric,
        "evaluation_columns": columns,
        "evaluation_table": evaluation_table,
        "first_train_loss": train_losses[0] if train_losses else None,
        "last_train_loss": train_losses[-1] if train_losses else None,
        "evaluation": evaluation,
        "samples": run.read_jsonl(run.samples),
        "eval_results": latest_evaluations(run),
    }


def number(value, digits: int = 4) -> str:
    """Numbers as the page shows them (and as the tests read them back)."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.{digits}g}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return html.escape(str(value))


def environment(section: Path | None = None) -> jinja2.Environment:
    """The report templates; `section`, a task's own partial (Task.report_section()), is added as task/<its name>."""
    loader: jinja2.BaseLoader = jinja2.PackageLoader("tunesmith.report", "templates")
    if section is not None:
        task_loader = jinja2.PrefixLoader({"task": jinja2.FileSystemLoader(section.parent)})
        loader = jinja2.ChoiceLoader([loader, task_loader])
    env = jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(["j2", "html"]),
        undefined=jinja2.ChainableUndefined,  # optional fields (older runs) show as n/a
    )
    env.filters["num"] = number
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, default=str)
    return env


def write_run_report(run: RunFolder, task) -> Path:
    """Render report.html (atomically: a half-written page never replaces a good one); `task`: the run's
    tunesmith.tasks.base.Task, which adds its own figures and its own section (a partial in its package)."""
    context = collect(run, task)
    section = task.report_section()
    page = (
        environment(section)
        .get_template("run.html.j2")
        .render(
            **context,
            task_section=f"task/{section.name}" if section else None,
            expected_plots=sorted(context["figures"]),
        )
    )
    target = run.path / "report.html"
    temporary = target.with_suffix(".html.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(target)
    return target
