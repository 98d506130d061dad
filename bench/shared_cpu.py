"""Training beside another process: the quickstart's tokens/s on a quiet host, with one process busy on a whole
core, and with one busy a third (or two thirds) of the time, for two threads (torch's own count on 2 cores), one thread,
two threads that sleep at once at OpenMP's barriers (OMP_WAIT_POLICY=PASSIVE), and tunesmith's default
(train.num_threads unset: the cores other processes leave free, revisited every step).

The bench starts the load itself (a Python loop that spins for `duty` of every `period` seconds), runs each cell
in its own process (`tunesmith train` on the quickstart's data and config, train.max_steps steps, evaluations off),
and reads tokens/s from the run's run.json (training steps only). Run it on a quiet host: the load average
before and after is in the results file, and any other job's load is measured with the cells.

Run: .venv/bin/python bench/shared_cpu.py [--steps 4] [--repeats 1] [--workdir DIR] [--settings NAME ...] [--output NAME]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from results_file import Provenance, train_quickstart_cell, write_results
from tunesmith import quickstart

LOADS = {  # name -> (duty, period in seconds), or None for a quiet host
    "quiet": None,
    "one core busy": (1.0, 1.0),
    "busy a third of the time": (1 / 3, 3.0),
    "busy two thirds of the time": (2 / 3, 3.0),
}
SETTINGS = {  # name -> (train.num_threads, environment added to the run's process)
    "2 threads": (2, {}),
    "1 thread": (1, {}),
    "tunesmith default (auto)": (None, {}),
    # GNU OpenMP (torch's wheel) reads its wait policy once at start-up: passive threads sleep at a barrier at once
    # instead of spinning first, so they leave a shared core to the other process sooner and wake later.
    "2 threads, passive wait": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
}
SPIN = """
import sys, time
duty, period = float(sys.argv[1]), float(sys.argv[2])
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < duty * period:
        pass
    if duty < 1:
        time.sleep((1 - duty) * period)
"""


def start_load(load: tuple[float, float] | None) -> subprocess.Popen | None:
    if load is None:
        return None
    return subprocess.Popen([sys.executable, "-c", SPIN, str(load[0]), str(load[1])])


def train_once(config: Path, name: str, steps: int, threads: int | None, env: dict) -> dict:
    threads_setting = "null" if threads is None else threads
    summary, wall = train_quickstart_cell(config, name, steps, {"train.num_threads": threads_setting}, env)
    return {
        "tokens_per_second": summary["tokens_per_second"],
        "train_seconds": summary["train_seconds"],
        "command_seconds": wall,
        "threads": summary.get("threads"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/tunesmith-bench-shared-cpu")
    parser.add_argument(
        "--settings", nargs="*", choices=list(SETTINGS), help="only these settings (default: all)"
    )
    parser.add_argument("--loads", nargs="*", choices=list(LOADS), help="only these loads (default: all)")
    parser.add_argument("--output", default="shared_cpu", help="results name: bench/results/NAME.json")
    args = parser.parse_args()
    provenance = Provenance.begin()
    workdir = Path(args.workdir)
    config = quickstart.prepare(workdir)
    cells = [
        (load_name, load, setting, threads, env)
        for load_name, load in LOADS.items()
        if not args.loads or load_name in args.loads
        for setting, (threads, env) in SETTINGS.items()
        if (not args.settings or setting in args.settings)
        and not (load is None and threads == 1)  # one thread on a quiet 2-core host only wastes a core
    ]
    measured: dict[tuple[str, str], list[dict]] = {(cell[0], cell[2]): [] for cell in cells}
    for repeat in range(
        args.repeats
    ):  # round-robin: a change in the host's own load touches every cell alike
        for load_name, load, setting, threads, env in cells:
            background = start_load(load)
            try:
                name = re.sub(r"[^A-Za-z0-9-]+", "_", f"{load_name}-{setting}-{repeat}")
                measured[load_name, setting].append(train_once(config, name, args.steps, threads, env))
            finally:
                if background is not None:
                    background.kill()
                    background.wait()
            shown = {"load": load_name, "setting": setting, "repeat": repeat + 1}
            print(
                json.dumps(
                    shown | {"tokens_per_second": measured[load_name, setting][-1]["tokens_per_second"]}
                )
            )
    rows = [
        {
            "load": load_name,
            "setting": setting,
            "tokens_per_second": statistics.median(m["tokens_per_second"] for m in runs),
            "tokens_per_second_min": min(m["tokens_per_second"] for m in runs),
            "tokens_per_second_max": max(m["tokens_per_second"] for m in runs),
            "repeats": runs,
        }
        for (load_name, setting), runs in measured.items()
    ]
    quiet = {row["setting"]: row["tokens_per_second"] for row in rows if row["load"] == "quiet"}
    for row in rows:
        base = quiet.get(row["setting"]) or quiet.get("tunesmith default (auto)") or quiet.get("2 threads")
        if base is None:
            continue  # no quiet row measured to compare with
        if "2 threads" in quiet:
            row["share_of_quiet"] = round(row["tokens_per_second"] / quiet["2 threads"], 3)
        row["share_of_own_quiet"] = round(row["tokens_per_second"] / base, 3)
    setup = {
        "workload": f"the quickstart (SmolLM2-135M-Instruct, LoRA r=16 all-linear, 4 x 2 rows a step), {args.steps} steps",
        "loads": {
            name: None if load is None else {"duty": load[0], "period_seconds": load[1]}
            for name, load in LOADS.items()
        },
        "settings": {name: {"train.num_threads": t, "environment": e} for name, (t, e) in SETTINGS.items()},
        "share_of_quiet": "tokens/s over the quiet host's 2-thread tokens/s (torch's own count on 2 cores)",
    }
    write_results(args.output, {"setup": setup, "rows": rows}, provenance)


if __name__ == "__main__":
    main()
