"""train.kernels on this CPU: the quickstart fine-tune with the plain sparse LM head (kernels: off), with the
chunked linear + cross-entropy (kernels: [chunked_ce]) and with auto, each cell in its own process.

Each cell is `tunesmith train` on the quickstart's data and config for train.max_steps steps (evaluations, samples
and the forgetting check off), round-robin over the repeats so a change in the host's load touches every cell
alike. From each run's run.json: real tokens/s (training steps only), peak RSS, training loss, and the kernels
decision (auto's probe timings and reason). Medians over the repeats.

Run: .venv/bin/python bench/kernels_cpu.py [--steps 4] [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_file import Provenance, write_results
from tunesmith import quickstart

CELLS = {"sparse head (kernels: off)": "off", "chunked_ce": "[chunked_ce]", "auto": "auto"}


def train_once(config: Path, name: str, steps: int, kernels: str) -> dict:
    overrides = {
        "train.max_steps": steps,
        "train.kernels": kernels,
        "train.eval_steps": 10_000,
        "eval.before_training": "false",
        "eval.samples": 0,
        "eval.reference": "null",
        "data.test_file": "null",
        "output.name": name,
    }
    command = [sys.executable, "-m", "tunesmith.cli", "train", str(config)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    subprocess.run(command, cwd=config.parent, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((config.parent / "runs" / name / "run.json").read_text())
    return {
        "tokens_per_second": summary["tokens_per_second"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "train_loss": summary["train_loss"],
        "train_seconds": summary["train_seconds"],
        "command_seconds": round(time.perf_counter() - started, 1),
        "kernels": summary["kernels"],
        "threads": summary.get("threads"),
    }


def summarize(cell: str, runs: list[dict]) -> dict:
    return {
        "cell": cell,
        "head_loss": runs[0]["kernels"]["head_loss"],
        "tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
        "tokens_per_second_min": min(r["tokens_per_second"] for r in runs),
        "tokens_per_second_max": max(r["tokens_per_second"] for r in runs),
        "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in runs),
        "train_loss": statistics.median(r["train_loss"] for r in runs),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/tunesmith-bench-kernels-cpu")
    args = parser.parse_args()
    provenance = Provenance.begin()
    config = quickstart.prepare(Path(args.workdir))
    runs: dict[str, list[dict]] = {cell: [] for cell in CELLS}
    for repeat in range(args.repeats):
        for cell, kernels in CELLS.items():
            name = f"{kernels.strip('[]')}-{repeat}"
            runs[cell].append(train_once(config, name, args.steps, kernels))
            print(
                f"[{repeat + 1}/{args.repeats}] {cell}: {runs[cell][-1]['tokens_per_second']} tok/s",
                flush=True,
            )
        rows = [summarize(cell, measured) for cell, measured in runs.items()]
        setup = {
            "workload": f"the quickstart (SmolLM2-135M-Instruct, LoRA r=16 all-linear, 4 x 2 rows a step), "
            f"{args.steps} steps a run",
            "repeats": args.repeats,
            "rounds_done": repeat + 1,
        }
        write_results("kernels_cpu", {"setup": setup, "rows": rows}, provenance)
    for row in rows:
        print(json.dumps({k: row[k] for k in ("cell", "head_loss", "tokens_per_second", "peak_memory_mb")}))


if __name__ == "__main__":
    main()
