"""`make bench`: the same LoRA fine-tune by the classic recipe, TRL's SFTTrainer (as shipped, and tuned) and
tunesmith (default, and with packing), each in its own process, several times, side by side.

Records the host (CPU model and flags, cores, load average before and after), library versions, fp32 and bf16
matmul rates at the model's own shapes, then for each recipe the median and spread over the repeats of real
(non-padding) tokens/s with the first optimizer step left out, peak RSS during training, validation loss on the
same held-out answers, and MFU: executed FLOPs per second over the measured rate of the precision the recipe used.
Repeats run round-robin, so a change in the host's load touches every recipe alike. Writes
bench/results/recipes.json (bench/results_file.py: with its meta block) and recipes.md from this run only.
Run: .venv/bin/python bench/run.py [--train 50] [--repeats 3] [--only trl_tuned tunesmith] [--output recipes]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig

from results_file import Provenance, describe, write_results
from tunesmith import quickstart
from tunesmith.config import ModelConfig
from tunesmith.models.loading import default_cache_dir, resolve_model
from tunesmith.training.flops import gemm_shapes
from tunesmith.training.precision import matmul_gflops

RECIPES = {  # label -> (recipe in bench/recipes.py, tunesmith --set overrides)
    "classic (Trainer, pad to 512, fp32)": ("classic", []),
    "TRL SFTTrainer defaults (bf16 on, checkpointing on)": ("trl_defaults", []),
    "TRL tuned (checkpointing off, padding_free, bf16 where fast)": ("trl_tuned", []),
    "tunesmith default": ("tunesmith", []),
    "tunesmith + packing": ("tunesmith", ["--set", "data.packing=true"]),
}


def run_recipe(
    recipe: str, model_dir: str, data: Path, folder: Path, bf16_fast: bool, extra: list[str]
) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).with_name("recipes.py")),
        recipe,
        model_dir,
        str(data),
        str(folder),
        "1" if bf16_fast else "0",
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        return {"failed": done.stderr[-3000:]}
    return json.loads(line[len("RESULT ") :])


def summarize(label: str, runs: list[dict], rates: dict) -> dict:
    """Median and spread over the repeats; MFU against the measured rate of the precision each run used."""
    done = [r for r in runs if "failed" not in r]
    row = {"label": label, "repeats": len(done), "runs": runs}
    if not done:
        return row
    speeds = [r["tokens_per_second"] for r in done]
    mfus = [r["executed_flops_per_second"] / (rates[r["precision"]] * 1e9) for r in done]
    row.update(
        precision=done[0]["precision"],
        tokens_per_second=statistics.median(speeds),
        tokens_per_second_min=min(speeds),
        tokens_per_second_max=max(speeds),
        mfu=statistics.median(mfus),
        peak_rss_mb=statistics.median(r["peak_rss_mb"] for r in done),
        validation_loss=statistics.median(r["validation_loss"] for r in done),
        train_loss=statistics.median(r["train_loss"] for r in done),
        timed_steps=done[0]["timed_steps"],
        timed_tokens=done[0]["tokens"],
    )
    return row


def skipped_row(label: str, rates: dict, tuned: dict | None) -> dict:
    """TRL's shipped default (bf16) where bf16 is far slower than fp32: not run, with what it would cost."""
    cost = ""
    if (
        tuned is not None
    ):  # the same steps' executed FLOPs (without checkpointing's recompute) at the bf16 rate
        flops = tuned["runs"][0]["executed_flops_per_second"] * tuned["runs"][0]["seconds"]
        cost = f"; TRL tuned's timed steps alone would take >= {flops / (rates['bf16'] * 1e9) / 60:.0f} min in bf16"
    reason = (
        f"not run: its default bf16 runs at {rates['bf16']:.1f} GFLOP/s on this host against "
        f"{rates['fp32']:.1f} in fp32{cost}"
    )
    return {"label": label, "repeats": 0, "skipped": reason}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=48, help="training examples (one epoch; 8 per step)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="run only these recipes (bench/recipes.py names or labels)")
    parser.add_argument(
        "--output", default="recipes", help="results name: bench/results/NAME.json and NAME.md"
    )
    args = parser.parse_args()
    provenance = Provenance.begin()
    model_dir = resolve_model(ModelConfig(name=str(quickstart.smollm2_folder())), default_cache_dir())
    shapes = gemm_shapes(AutoConfig.from_pretrained(model_dir), 512)
    rates = {
        name: matmul_gflops(dtype, shapes, 3.0)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    bf16_fast = rates["bf16"] > 1.3 * rates["fp32"]
    print(
        f"matmul at the model's shapes (512 tokens): fp32 {rates['fp32']:.1f}, bf16 {rates['bf16']:.1f} GFLOP/s"
    )
    train, validation = quickstart.headline_examples(args.train, 20, seed=1)
    chosen = {
        label: spec for label, spec in RECIPES.items() if not args.only or {spec[0], label} & set(args.only)
    }
    runs: dict[str, list[dict]] = {label: [] for label in chosen}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data.json"
        data.write_text(json.dumps({"train": train, "validation": validation}))
        for repeat in range(args.repeats):
            for label, (recipe, extra) in chosen.items():
                if recipe == "trl_defaults" and not bf16_fast:
                    continue
                result = run_recipe(
                    recipe, model_dir, data, Path(folder) / f"{recipe}-{repeat}", bf16_fast, extra
                )
                runs[label].append(result)
                shown = "failed" if "failed" in result else f"{result['tokens_per_second']:.1f} tok/s"
                print(f"[{repeat + 1}/{args.repeats}] {label}: {shown}", flush=True)
            # Written after every round: a run cut short still leaves the rounds it finished (and says so).
            setup = {
                "matmul_gflops": rates,
                "matmul_shapes": [list(s) for s in shapes],
                "train_examples": len(train),
                "validation_examples": len(validation),
                "repeats": args.repeats,
                "rounds_done": repeat + 1,
            }
            write_tables(table_rows(chosen, runs, rates, bf16_fast), setup, provenance, args.output)


def table_rows(chosen: dict, runs: dict, rates: dict, bf16_fast: bool) -> list[dict]:
    rows = [summarize(label, runs[label], rates) for label in chosen]
    tuned = next((r for r in rows if r.get("timed_tokens") and r["label"].startswith("TRL tuned")), None)
    for index, (label, (recipe, _)) in enumerate(chosen.items()):
        if recipe == "trl_defaults" and not bf16_fast:
            rows[index] = skipped_row(label, rates, tuned)
    return rows


def write_tables(rows: list[dict], setup: dict, provenance: Provenance, output: str = "recipes") -> None:
    by_recipe = {r["label"]: r for r in rows if r.get("tokens_per_second")}
    tuned = next((r for label, r in by_recipe.items() if label.startswith("TRL tuned")), None)
    classic = next((r for label, r in by_recipe.items() if label.startswith("classic")), None)
    lines = [
        "| recipe | precision | real tokens/s, median (min-max) | vs TRL tuned | vs classic | peak RSS MB | "
        "validation loss | MFU (executed FLOPs / measured rate of its precision) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("skipped") or not r.get("tokens_per_second"):
            reason = r.get("skipped") or "failed: " + r["runs"][0]["failed"][-200:].replace("\n", " ")
            lines.append(f"| {r['label']} | - | {reason} | - | - | - | - | - |")
            continue
        ratios = [
            f"{r['tokens_per_second'] / b['tokens_per_second']:.2f}x" if b else "-" for b in (tuned, classic)
        ]
        lines.append(
            f"| {r['label']} | {r['precision']} | {r['tokens_per_second']:.1f} ({r['tokens_per_second_min']:.1f}-"
            f"{r['tokens_per_second_max']:.1f}) | {ratios[0]} | {ratios[1]} | {r['peak_rss_mb']:.0f} | "
            f"{r['validation_loss']:.4f} | {100 * r['mfu']:.1f}% |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    path = write_results(output, {"setup": setup, "rows": rows}, provenance)
    meta = json.loads(path.read_text())["meta"]
    header = (
        f"{setup['train_examples']} BBC headline examples, one epoch, {setup['rounds_done']} of "
        f"{setup['repeats']} planned repeats per recipe done, each in its own process, first optimizer step left "
        "out. Shared host: treat the ratios, measured side by side, as firmer than the absolute rates.\n"
        f"{describe(meta)}.\nMatmul at the model's shapes: fp32 {setup['matmul_gflops']['fp32']:.1f}, bf16 "
        f"{setup['matmul_gflops']['bf16']:.1f} GFLOP/s."
    )
    path.with_suffix(".md").write_text(f"{header}\n\n{table}\n")


if __name__ == "__main__":
    main()
