"""`tunesmith eval RUN [--data FILE] [--baseline] [--judge URL_OR_RUN]`: score a finished run, optionally beside its
untouched base and with a pairwise judge of the two."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.console import say
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.generation import generate
from tunesmith.evaluation.judge import Judge, compare_pairs, endpoint_judge
from tunesmith.evaluation.judge import describe as describe_judge
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


def judge_from(spec: str, model: str | None = None) -> Judge:
    """--judge: an http(s) address of an OpenAI-compatible server, or a finished run folder judging here."""
    if spec.startswith(("http://", "https://")):
        return endpoint_judge(spec, model, os.environ.get("OPENAI_API_KEY"))
    judge_run = RunFolder.open(spec)
    judge_run.finished_summary("eval --judge")
    loaded = get_task(judge_run.load_config().task).load_run(judge_run)
    if not hasattr(loaded, "renderer"):
        raise TunesmithError(
            f"--judge {spec}: that run does not generate text; give a language model's run or a URL"
        )

    def ask(messages: list[dict]) -> str:
        turns = tuple((m["role"], m["content"]) for m in messages)
        return generate(loaded.model, loaded.renderer, [turns], max_new_tokens=8)[0]

    return Judge(f"run {judge_run.path}", ask)


def evaluate_run(
    run: RunFolder,
    data: str | Path | None,
    baseline: bool,
    generations: int | None = None,
    judge: str | None = None,
    judge_model: str | None = None,
) -> dict:
    task = get_task(run.load_config().task)
    run.finished_summary("eval")
    referee = judge_from(judge, judge_model) if judge else None  # a bad address fails before any scoring
    result = task.evaluate(run, data, baseline or referee is not None, generations)
    split = result.get("split", "validation")
    generated = result.get("generated")
    if referee is not None and not generated:
        raise TunesmithError(
            f"--judge compares generated answers, and this evaluation generated none ({task.name} runs generate "
            "only when they are language models, and --generations must be above 0)"
        )
    folder = _output_folder(run, data, split)
    if referee is not None:
        judged = compare_pairs(referee, generated)
        say(describe_judge(judged))
        (folder / "judge.json").write_text(json.dumps(judged, indent=2), encoding="utf-8")
        result["judge"] = {k: v for k, v in judged.items() if k != "verdicts"} | {
            "verdicts_file": "judge.json"
        }
    generated = result.pop("generated", None)
    if generated:
        with (folder / "generations.jsonl").open("w", encoding="utf-8") as handle:
            for record in generated:
                handle.write(json.dumps(record) + "\n")
    turns = result.pop("tool_turns", None)
    if turns:  # each assistant turn of the tool conversations generated, tuned and base, beside its reference
        with (folder / "tool_turns.jsonl").open("w", encoding="utf-8") as handle:
            for record in turns:
                handle.write(json.dumps(record) + "\n")
        result["tool_turns_file"] = "tool_turns.jsonl"
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
