"""Measure what train.sparse_lm_head buys: the quickstart fine-tune (SmolLM2-135M, LoRA) for a few steps, on and off.

Run: .venv/bin/python bench/sparse_lm_head.py [--steps 6]
Prints real (non-padding) tokens/s and final training loss for each setting, and writes bench/results/sparse_lm_head.json
(bench/results_file.py: with host, load, date, command and versions).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from results_file import Provenance, write_results
from tunesmith import api, quickstart


def measure(config: Path, sparse: bool, steps: int, workdir: Path) -> dict:
    overrides = [
        f"train.sparse_lm_head={str(sparse).lower()}",
        f"train.max_steps={steps}",
        "train.precision=fp32",
        "eval.before_training=false",
        "eval.samples=0",
        "data.validation_file=null",
        "data.validation_ratio=0",
        f"output.dir={workdir / 'runs'}",
        f"output.name=sparse-{sparse}",
    ]
    summary = api.train(config, overrides)
    return {
        "sparse_lm_head": sparse,
        "steps": summary["global_step"],
        "tokens_per_second": summary["tokens_per_second"],
        "train_loss": summary["train_loss"],
        "train_seconds": summary["train_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    provenance = Provenance.begin()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        config = quickstart.prepare(workdir / "quickstart")
        rows = [measure(config, sparse, args.steps, workdir) for sparse in (False, True)]
    print("\n| sparse_lm_head | steps | real tokens/s | train loss | seconds |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['sparse_lm_head']} | {row['steps']} | {row['tokens_per_second']} | {row['train_loss']:.4f} | {row['train_seconds']} |"
        )
    speedup = rows[1]["tokens_per_second"] / rows[0]["tokens_per_second"]
    print(f"\nspeed-up: {speedup:.2f}x")
    write_results("sparse_lm_head", {"rows": rows, "speedup": speedup}, provenance)


if __name__ == "__main__":
    main()
