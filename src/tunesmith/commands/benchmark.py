"""`tunesmith eval RUN --bench TASK [TASK ...]`: lm-evaluation-harness benchmarks on a finished run, base and tuned.

The tuned model is the run as tunesmith loads it (an adapter over its base, not merged); the base is the same
weights with the adapter switched off, or the base model loaded again after full fine-tuning. Results go to
RUN/eval/bench/evaluation.json, beside the lm-eval task YAMLs that reproduce them."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.evaluation import benchmarks
from tunesmith.models.loading import load_model
from tunesmith.registry import get_task
from tunesmith.run_folder import RunFolder, free_path
from tunesmith.tasks.generator import base_model_path


@contextmanager
def base_of(tuned_model, run: RunFolder, cfg, auto_class: str):
    """The untouched base: the adapter switched off (LoRA, DoRA, QLoRA), else the base loaded again."""
    if hasattr(tuned_model, "disable_adapter"):
        with tuned_model.disable_adapter():
            yield tuned_model
        return
    base = load_model(base_model_path(run, cfg), cfg.model, auto_class=auto_class)
    base.eval()
    yield base


def benchmark_run(run: RunFolder, specs: list[str]) -> dict:
    """Score the run's tuned model and its base on each benchmark; write and return the comparison."""
    cfg = run.load_config()
    task = get_task(cfg.task)
    benchmarks.check_trainable(specs, task)
    run.finished_summary("eval --bench")
    folder = free_path(run.path / "eval" / "bench")
    folder.mkdir(parents=True)
    prepared = benchmarks.prepare_benchmarks([_resolved(s) for s in specs], folder / "tasks")
    tuned = task.load_run(run)
    tokenizer, batch_size = tuned.renderer.tokenizer, cfg.eval.batch_size
    tuned_scores = benchmarks.score_benchmarks(tuned.model, tokenizer, prepared, batch_size)
    with base_of(tuned.model, run, cfg, task.auto_class) as base:
        base_scores = benchmarks.score_benchmarks(base, tokenizer, prepared, batch_size)
    record = benchmarks.comparison(prepared, base_scores, tuned_scores) | {
        "data": ", ".join(specs),
        "batch_size": batch_size,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / "evaluation.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    from tunesmith.report.run_report import write_run_report

    write_run_report(run, task)
    table = benchmarks.table(record)
    kept = benchmarks.knowledge_kept(record)
    return record | {"folder": str(folder), "table": table + (f"\n{kept}" if kept else "")}


def _resolved(spec: str) -> str:
    """A file named on the command line, from the current directory; a built-in probe's name as it is."""
    return str(Path(spec).resolve()) if Path(spec).suffix else spec
