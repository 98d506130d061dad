"""Peak memory of DPO with LoRA (reference = adapter off) beside SFT on the same pairs' chosen side, and beside SFT
on both sides (the same 2B rows a DPO batch holds, in one step of batch 2B, so only the reference pass and the
loss differ).

Each run is its own process (peak RSS is per process). The pairs: a BBC article's opening as the prompt, its real
headline chosen, the article's next sentences rejected (a paragraph, as a base model would write; no generation
needed). Writes bench/results/preference_memory.json (bench/results_file.py: with host, load, date, command and
versions). Usage: .venv/bin/python bench/preference_memory.py [--steps 3] [--pairs 24] [--work /tmp/pref-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from results_file import Provenance, write_results
from tunesmith.quickstart import _lead, _shuffled_articles, _write_jsonl, smollm2_folder

PROMPT = "Write a short headline for this news article.\n\n{body}"


def pairs(count: int) -> list[dict]:
    rows = []
    for path in _shuffled_articles(seed=1):
        lines = path.read_text(encoding="latin-1").strip().splitlines()
        body = " ".join(lines[1:])
        opening = _lead(body, 400)
        rest = _lead(body[len(opening) :], 250)
        if lines[0].strip() and len(rest) > 100:
            rows.append({"prompt": PROMPT.format(body=opening), "chosen": lines[0].strip(), "rejected": rest})
        if len(rows) == count:
            return rows
    return rows


def config(work: Path, task: str, steps: int) -> dict:
    raw = {
        "model": {"name": str(smollm2_folder())},
        "data": {"train_file": str(work / f"{task}.jsonl"), "validation_ratio": 0.0, "max_length": 512},
        "method": {
            "name": "lora",
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        },
        "train": {"batch_size": 4, "max_steps": steps, "precision": "fp32", "logging_steps": 1, "warmup": 0},
        "eval": {"before_training": False, "samples": 0},
        "output": {"dir": str(work / "runs"), "name": task},
    }
    if task == "sft_both":  # a DPO step of 4 pairs holds 8 rows: the same 8 rows in one SFT step
        raw["train"]["batch_size"] = 8
    if task.startswith(
        "preference"
    ):  # preference_precomputed: the reference's log-probs computed before step 1
        raw["task"] = "preference"
        raw["data"]["train_file"] = str(work / "preference.jsonl")
        raw["preference"] = {
            "loss": "dpo",
            "precompute_reference": task in ("preference_precomputed", "preference_split"),
            # chunks no larger than the chosen half; _live: the reference is the adapter-off pass in the step
            "split_backward": task in ("preference_split", "preference_split_live"),
        }
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--work", default="/tmp/pref-memory")
    parser.add_argument("--runs", nargs="+", default=["sft", "sft_both", "preference"])
    args = parser.parse_args()
    provenance = Provenance.begin()
    work = Path(args.work)
    rows = pairs(args.pairs)
    _write_jsonl(work / "preference.jsonl", rows)
    _write_jsonl(work / "sft.jsonl", [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows])
    both = [{"prompt": r["prompt"], "response": r[side]} for side in ("chosen", "rejected") for r in rows]
    _write_jsonl(work / "sft_both.jsonl", both)
    results = {}
    for task in args.runs:
        if (work / "runs" / task / "run.json").exists():  # measured before: each run once per work folder
            summary = json.loads((work / "runs" / task / "run.json").read_text())
            results[task] = {
                "peak_memory_mb": summary["peak_memory_mb"],
                "train_seconds": summary["train_seconds"],
                "reused_from": str(
                    work / "runs" / task
                ),  # measured by an earlier invocation, not under this meta
            }
            continue
        path = work / f"{task}.yaml"
        path.write_text(json.dumps(config(work, task, args.steps)))
        subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", str(path)], check=True)
        summary = json.loads((work / "runs" / task / "run.json").read_text())
        results[task] = {
            "peak_memory_mb": summary["peak_memory_mb"],
            "train_seconds": summary["train_seconds"],
        }
    for dpo in ("preference", "preference_precomputed", "preference_split", "preference_split_live"):
        for task in ("sft", "sft_both"):
            if task in results and dpo in results:
                ratio = results[dpo]["peak_memory_mb"] / results[task]["peak_memory_mb"]
                results[f"{dpo}_over_{task}"] = round(ratio, 3)
    print(json.dumps(results, indent=2))
    settings = {"steps": args.steps, "pairs": args.pairs, "work": str(work)}
    print(write_results("preference_memory", {"settings": settings, "results": results}, provenance))


if __name__ == "__main__":
    main()
