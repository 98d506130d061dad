"""`make bench`: the same LoRA fine-tune with the classic recipe, TRL's SFTTrainer and tunesmith, side by side.

Measures, in one sitting on this machine: fp32 and bf16 matrix-product rates, then for each recipe real
(non-padding) tokens/s, peak resident memory, final training loss, validation loss on the same held-out answers,
and MFU (model FLOPs per second over the measured matmul rates). Writes bench/results/recipes.json and .md.
Run: .venv/bin/python bench/run.py [--steps 4] [--train 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tunesmith import quickstart
from tunesmith.config import ModelConfig
from tunesmith.models.loading import default_cache_dir, resolve_model

RECIPES = {
    "classic (Trainer, pad to 512)": ("classic", []),
    "TRL SFTTrainer defaults": ("trl", []),
    "tunesmith default": ("tunesmith", []),
    "tunesmith, sparse LM head off": ("tunesmith", ["train.sparse_lm_head=false"]),
    "tunesmith + packing": ("tunesmith", ["data.packing=true"]),
}


def matmul_gflops(dtype: torch.dtype, seconds: float = 3.0) -> float:
    a, b = torch.randn(2048, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * 2048 * 576 * 1536 * count / (time.perf_counter() - started) / 1e9


def flops_per_token(model_dir: str) -> float:
    """LoRA training FLOPs per token: forward (2N) plus activation gradients (2N) over every matmul weight."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    head_dim = c.hidden_size // c.num_attention_heads
    attention = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    matmul_weights = c.num_hidden_layers * (attention + mlp) + c.hidden_size * c.vocab_size
    return 4 * matmul_weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--train", type=int, default=50)
    parser.add_argument("--only", nargs="*", help="run only these recipe labels")
    parser.add_argument(
        "--from-json", action="store_true", help="rebuild the table from bench/results/recipes.json"
    )
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads((Path(__file__).parent / "results" / "recipes.json").read_text())
        write_results(saved["rows"], saved["meta"])
        return
    model_dir = resolve_model(ModelConfig(name=str(quickstart.smollm2_folder())), default_cache_dir())
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    per_token = flops_per_token(model_dir)
    print(
        f"matmul: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s; {per_token / 1e9:.3f} GFLOP per training token"
    )
    train, validation = quickstart.headline_examples(args.train, 20, seed=1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data.json"
        data.write_text(json.dumps({"train": train, "validation": validation}))
        for label, (recipe, extra) in RECIPES.items():
            if args.only and label not in args.only:
                continue
            command = [
                sys.executable,
                str(Path(__file__).with_name("recipes.py")),
                recipe,
                model_dir,
                str(data),
                str(args.steps),
                str(Path(folder) / recipe / str(len(rows))),
                *extra,
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
            if line is None:
                print(f"{label}: failed\n{done.stderr[-3000:]}")
                continue
            result = json.loads(line[len("RESULT ") :]) | {"label": label}
            rows.append(result)
            print(
                f"{label}: {result['tokens_per_second']:.1f} tok/s, peak {result['peak_rss_mb']:.0f} MB, "
                f"train loss {result['train_loss']:.4f}, validation loss {result['validation_loss']:.4f}",
                flush=True,
            )
    meta = {
        "steps": args.steps,
        "train_examples": len(train),
        "matmul_gflops": {"fp32": fp32, "bf16": bf16},
        "flops_per_token": per_token,
        "torch": torch.__version__,
    }
    write_results(rows, meta)


def mfu(row: dict, rate: float, faster_than_fp32: bool) -> str:
    # MFU against a rate slower than fp32 (bf16 without AVX-512 BF16) says nothing: leave it out.
    return (
        f"{100 * row['tokens_per_second'] * row['flops_per_token'] / (rate * 1e9):.1f}%"
        if faster_than_fp32
        else "n/a"
    )


def write_results(rows: list[dict], meta: dict) -> None:
    """Print and write the table; `--from-json` rebuilds it from bench/results/recipes.json without rerunning."""
    fp32, bf16 = meta["matmul_gflops"]["fp32"], meta["matmul_gflops"]["bf16"]
    base = {r["recipe"]: r for r in rows if r["recipe"] in ("classic", "trl")}
    lines = [
        "| recipe | real tokens/s | vs classic | vs TRL | peak RSS MB | train loss | validation loss | MFU fp32 | MFU bf16 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        r["flops_per_token"] = meta["flops_per_token"]
        versus = [
            f"{r['tokens_per_second'] / base[k]['tokens_per_second']:.2f}x" if k in base else "-"
            for k in ("classic", "trl")
        ]
        lines.append(
            f"| {r['label']} | {r['tokens_per_second']:.1f} | {versus[0]} | {versus[1]} | {r['peak_rss_mb']:.0f} | "
            f"{r['train_loss']:.4f} | {r['validation_loss']:.4f} | {mfu(r, fp32, True)} | {mfu(r, bf16, bf16 > fp32)} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "recipes.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    header = (
        f"{meta['steps']} optimizer steps, {meta['train_examples']} examples; matmul fp32 {fp32:.1f} / bf16 {bf16:.1f} "
        "GFLOP/s; MFU counts the full LM head (model FLOPs), so sparse-head rows slightly overstate it."
    )
    (out / "recipes.md").write_text(f"{header}\n\n{table}\n")


if __name__ == "__main__":
    main()
