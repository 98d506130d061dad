"""`tunesmith eval RUN [--data FILE] [--baseline]`: score a finished run, optionally beside its untouched base."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.evaluation.lm import COUNTS
from tunesmith.registry import get_task
from tunesmith.run_folder import RunFolder, free_path


def _output_folder(run: RunFolder, data: str | Path | None, split: str) -> Path:
    """RUN/eval/<data name or split>; an earlier evaluation is never overwritten (-2, -3, ...)."""
    folder = free_path(run.path / "eval" / (Path(data).stem if data else split))
    folder.mkdir(parents=True)
    return folder


def side_by_side(tuned: dict, baseline: dict | None) -> str:
    """The printed table: metric, tuned, base, difference."""
    names = [k for k, v in tuned.items() if isinstance(v, float) and k not in COUNTS]
    lines = [f"{'metric':<18}{'tuned':>14}" + (f"{'base':>14}{'difference':>14}" if baseline else "")]
    for name in names:
        line = f"{name:<18}{tuned[name]:>14.4f}"
        if baseline and isinstance(baseline.get(name), (int, float)):
            line += f"{baseline[name]:>14.4f}{tuned[name] - baseline[name]:>+14.4f}"
        lines.append(line)
    return "\n".join(lines)


def evaluate_run(
    run: RunFolder, data: str | Path | None, baseline: bool, generations: int | None = None
) -> dict:
    task = get_task(run.load_config().task)
    run.finished_summary("eval")
    result = task.evaluate(run, data, baseline, generations)
    split = result.get("split", "validation")
    folder = _output_folder(run, data, split)
    generated = result.pop("generated", None)
    if generated:
        with (folder / "generations.jsonl").open("w", encoding="utf-8") as handle:
            for record in generated:
                handle.write(json.dumps(record) + "\n")
    result |= {
        "data": str(data) if data else f"{split} split of the run",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if result.get("baseline"):
        result["difference"] = {
            k: round(v - result["baseline"][k], 6)
            for k, v in result["tuned"].items()
            if isinstance(v, float)
            and k not in COUNTS
            and isinstance(result["baseline"].get(k), (int, float))
        }
    (folder / "evaluation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    from tunesmith.report.run_report import write_run_report

    write_run_report(run, task)
    return result | {"folder": str(folder), "table": side_by_side(result["tuned"], result.get("baseline"))}
