"""train.kernels on this CPU: the quickstart fine-tune with the plain sparse LM head (kernels: off), with the
chunked linear + cross-entropy (kernels: [chunked_ce]) and with auto, each cell in its own process.

Each cell is `tunesmith train` on the quickstart's data and config for train.max_steps steps (evaluations, samples
and the forgetting check off), round-robin over the repeats so a change in the host's load touches every cell
alike. From each run's run.json: real tokens/s (training steps only), peak RSS, training loss, and the kernels
decision (auto's probe timings and reason). Medians over the repeats.

Then the head and loss alone, each cell in its own process, at SmolLM2's head (49,152 x 576, frozen, fp32): the
plain sparse head over the rows it projects against chunked_ce over the supervised rows alone, at the quickstart's
rows per micro-batch (read from the auto run's record) and at a long fully supervised micro-batch (4 x 512 rows:
the same rows for both, where only memory differs). Per cell: the fastest and the median of several forward +
backward passes, and the pass's extra peak RSS (the high-water mark after the passes less the RSS before them).

Run: .venv/bin/python bench/kernels_cpu.py [--steps 4] [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_file import Provenance, train_quickstart_cell, write_results
from tunesmith import quickstart

CELLS = {"sparse head (kernels: off)": "off", "chunked_ce": "[chunked_ce]", "auto": "auto"}
HIDDEN, VOCABULARY, PASSES = 576, 49152, 5  # the first pass is a warm-up


def train_once(config: Path, name: str, steps: int, kernels: str) -> dict:
    summary, wall = train_quickstart_cell(config, name, steps, {"train.kernels": kernels})
    return {
        "tokens_per_second": summary["tokens_per_second"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "train_loss": summary["train_loss"],
        "train_seconds": summary["train_seconds"],
        "command_seconds": wall,
        "kernels": summary["kernels"],
        "threads": summary.get("threads"),
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def head_cell(head_loss: str, rows: int, supervised: int) -> dict:
    """One head loss over `rows` rows of which the first `supervised` are supervised, in this process."""
    import torch

    from tunesmith.training.kernels import HEAD_LOSSES

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, HIDDEN, generator=generator).requires_grad_()
    weight = torch.randn(VOCABULARY, HIDDEN, generator=generator).div_(HIDDEN**0.5)  # no temporary copy
    targets = torch.randint(0, VOCABULARY, (rows,), generator=generator)
    targets[supervised:] = -100
    before = rss_mb()
    seconds = []
    for _ in range(PASSES):
        started = time.perf_counter()
        HEAD_LOSSES[head_loss](hidden, weight, targets).backward()
        seconds.append(time.perf_counter() - started)
        hidden.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "head_loss": head_loss,
        "rows": rows,
        "supervised_rows": supervised,
        "seconds_fastest": round(min(seconds[1:]), 4),
        "seconds_median": round(statistics.median(seconds[1:]), 4),
        "extra_peak_rss_mb": round(peak - before, 1),
    }


def head_cells(auto: dict) -> list[dict]:
    """The head-only cells, each in its own process: the quickstart's rows, and a long supervised batch."""
    shapes = {
        "quickstart micro-batch": (auto["plain_rows"], auto["supervised_rows"]),
        "4 x 512 supervised rows": (2048, 2048),
    }
    cells = []
    for label, (plain, supervised) in shapes.items():
        for head_loss, rows in (("sparse_head", plain), ("chunked_ce", supervised)):
            # the plain head projects every kept position of every row; chunked_ce the supervised ones only
            command = [sys.executable, __file__, "--head-cell", head_loss, str(rows), str(supervised)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            cell = json.loads(done.stdout.strip().splitlines()[-1])
            cells.append({"shape": label, **cell})
            print(json.dumps(cells[-1]), flush=True)
    return cells


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
    parser.add_argument("--head-cell", nargs=3, metavar=("HEAD_LOSS", "ROWS", "SUPERVISED"))
    args = parser.parse_args()
    if args.head_cell:
        name, rows, supervised = args.head_cell
        print(json.dumps(head_cell(name, int(rows), int(supervised))))
        return
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
    head = head_cells(runs["auto"][0]["kernels"])
    write_results("kernels_cpu", {"setup": setup, "rows": rows, "head_only": head}, provenance)


if __name__ == "__main__":
    main()
