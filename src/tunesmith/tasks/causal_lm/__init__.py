"""The supervised fine-tuning recipe for causal language models, read top to bottom."""

from __future__ import annotations

import contextlib

from tunesmith.config import Config
from tunesmith.console import is_main, say
from tunesmith.data.collate import IGNORE, pack, pad_token_id
from tunesmith.data.mix import REPLAY, mix_train, supervised_token_shares
from tunesmith.data.mix import describe as describe_mix
from tunesmith.data.prepare import build_renderer, check_data, tokenize_data, tokenize_examples
from tunesmith.data.templates import Renderer
from tunesmith.evaluation.collapse import generator_alarm
from tunesmith.evaluation.forgetting import read_reference_texts
from tunesmith.evaluation.generation import generate
from tunesmith.evaluation.lm import language_model_loss
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.registry import register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.base import Rung, Task
from tunesmith.tasks.causal_lm import run as causal_lm_run
from tunesmith.tasks.causal_lm.replay import self_replay
from tunesmith.tasks.common import (
    ReferencePerplexity,
    classifier_settings_problems,
    write_conversation_samples,
)
from tunesmith.tasks.pipeline import Prepared
from tunesmith.training.loop import build_trainer
from tunesmith.training.precision import frozen_weights_in_bf16


def overflow_line(over: dict, split: str) -> str:
    """'N <split> example(s) longer than max_length=M were dropped' (or truncated), from the data report."""
    action = "dropped" if over["action"] == "drop" else "truncated"
    return f"{over['count']} {split} example(s) longer than max_length={over['max_length']} were {action}"


def print_data_summary(report: dict) -> None:
    line = (
        f"data: {report['rows_read']} rows read, {report['bad_rows']} bad, {report.get('duplicates_removed', 0)} duplicates removed; "
        f"{report['train_examples']} train / {report['validation_examples']} validation ({report['format']} format)"
    )
    say(line)
    for split in ("train", "validation"):
        over = report.get("over_max_length", {}).get(split)
        if over and over["count"]:
            say(f"data: {overflow_line(over, split)}")
    eos = report.get("eos_in_labels")
    if eos and eos["count"] < eos["of"]:
        say(
            f"data: warning: only {eos['count']} of {eos['of']} examples have an end-of-answer token in their labels; "
            "the tuned model may not learn to stop"
        )


def sample_conversations(validation_examples, count: int):
    picked = [e for e in validation_examples if e.messages and e.messages[-1][0] == "assistant"][:count]
    return [(e.where, e.messages[:-1], e.messages[-1][1]) for e in picked]


def with_extra_sources(cfg: Config, checked, model_path: str, renderer: Renderer, cache_dir):
    """data.mix and data.replay drawn into the training rows (self-replay generated here, once, and cached)."""
    pools = dict(checked.sources)
    self_replay_report = None
    if cfg.data.replay is not None and cfg.data.replay.source == "self":
        pools[REPLAY], self_replay_report = self_replay(cfg, model_path, renderer, checked.train, cache_dir)
    checked = mix_train(checked, cfg.data, pools)
    if self_replay_report is not None:
        checked.report["mix"]["self_replay"] = self_replay_report
    if "mix" in checked.report:
        say(describe_mix(checked.report["mix"]))
    return checked


HALF_EPOCH = 0.5  # the fewest epochs of the small adapter rungs in `tunesmith plan`


class CausalLMTask(Task):
    name = "causal-lm"
    summary = "supervised fine-tuning of a language model on prompts and answers (or plain text)"
    starter = "sft"
    provides = frozenset({"4-bit base", "8-bit base", "replay", "kernels"})
    default_overflow = "drop"
    verbs = frozenset({"generate", "merge"})
    pipeline_tag = "text-generation"
    auto_class = "AutoModelForCausalLM"
    sweep_metrics = ("eval_loss",)

    def config_problems(self, cfg: Config) -> list[str]:
        problems = classifier_settings_problems(cfg)
        if cfg.data.on_overflow in ("head_tail", "windows"):
            problems.append(
                f"data.on_overflow: {cfg.data.on_overflow} is for text-classification of single texts (no text pair)"
            )
        return problems

    def check_data(self, data):
        return check_data(data)

    def plan_ladder(self, cfg: Config) -> list[Rung]:
        # A language model learns from every step: when the budget holds less than an epoch, half an epoch of
        # the small adapters still lowers validation loss (the quickstart's 5-minute plan, docs/autopilot.md);
        # the richer rungs are only worth a whole epoch.
        attention = ["q_proj", "v_proj"]
        return [
            Rung(
                "qlora r=8",
                {
                    "method.name": "qlora",
                    "method.lora.r": 8,
                    "method.lora.alpha": 16,
                    "method.lora.target_modules": "all-linear",
                },
                HALF_EPOCH,
                "a 4-bit base under adapters: for when even LoRA's base weights do not fit",
                True,
            ),
            Rung(
                "lora r=8 on q,v",
                {
                    "method.name": "lora",
                    "method.lora.r": 8,
                    "method.lora.alpha": 16,
                    "method.lora.target_modules": attention,
                },
                HALF_EPOCH,
                "the classic small adapter (attention queries and values)",
            ),
            Rung(
                "lora r=16 all-linear",
                {
                    "method.name": "lora",
                    "method.lora.r": 16,
                    "method.lora.alpha": 32,
                    "method.lora.target_modules": "all-linear",
                },
                1.0,
                "adapters on every linear layer at twice the rank: closer to full fine-tuning",
            ),
            Rung(
                "full",
                {"method.name": "full"},
                1.0,
                "every weight trains: when the model is small enough for its optimizer state",
            ),
            # Tried only when no float rung fits, after qlora: the richer of the two, chosen when both fit.
            Rung(
                "lora r=8 int8 base",
                {
                    "model.quantization": "int8",
                    "method.name": "lora",
                    "method.lora.r": 8,
                    "method.lora.alpha": 16,
                    "method.lora.target_modules": "all-linear",
                },
                HALF_EPOCH,
                "an 8-bit base under adapters (nearer the float base than 4-bit): for when LoRA's float32 base "
                "does not fit; on a CPU no faster, and its peak lower only where base weights dominate (docs/speed.md)",
                True,
            ),
        ]

    def validated_data(self, cfg: Config):
        checked = super().validated_data(cfg)
        if cfg.eval.reference:  # a bad reference file fails now, not after the model is loaded
            read_reference_texts(
                cfg.eval.reference, cfg.eval.reference_field, cfg.eval.reference_max_examples
            )
        return checked

    # -- the pipeline's hooks (tasks/pipeline.py) ------------------------------------------------------------
    def prepare(self, cfg: Config, checked, model_path: str, cache_dir) -> Prepared:
        tokenizer = load_tokenizer(model_path, cfg.model)
        renderer = build_renderer(tokenizer, cfg.data, checked)
        checked = with_extra_sources(cfg, checked, model_path, renderer, cache_dir)
        data = tokenize_data(checked, cfg.data, renderer, cache_dir)
        report = {**checked.report, **data["report"]}
        if "mix" in report:  # the loss weighs tokens, not rows: say each source's share of them too
            report["mix"]["supervised_token_shares"] = supervised_token_shares(
                report["mix"], data["train"], IGNORE
            )
        test_rows, test_over = tokenize_examples(checked.test, cfg.data, renderer)
        if checked.test:
            report["over_max_length"]["test"] = test_over
        train_rows = data["train"]
        if cfg.data.packing:
            packed = pack(train_rows, cfg.data.max_length)
            say(
                f"data: packed {len(train_rows)} examples into {len(packed)} rows of up to {cfg.data.max_length} tokens"
            )
            train_rows = packed
        extras = {"tokenizer": tokenizer, "renderer": renderer, "checked": checked, "cfg": cfg}
        lengths = [len(row["input_ids"]) for row in train_rows]
        return Prepared(train_rows, data["validation"], test_rows, report, lengths, extras)

    def print_data_summary(self, report: dict) -> None:
        print_data_summary(report)

    def build_model(self, cfg: Config, model_path: str, method, data: Prepared):
        return method.apply(
            load_model(model_path, cfg.model, method.quantization_config(cfg.method)), cfg.method
        )

    def build_trainer(self, cfg, run, model, data: Prepared, precision, callbacks, resuming, checkpointing):
        return build_trainer(
            cfg, run, model, data.extras["tokenizer"], data.train, data.validation, precision, callbacks,
            resuming=resuming, gradient_checkpointing=checkpointing,
        )  # fmt: skip

    def summary_fields(self, cfg: Config, data: Prepared) -> dict:
        renderer = data.extras["renderer"]
        return {"template": renderer.kind, "stop_token_ids": renderer.stop_token_ids()}

    def forgetting_probe(self, cfg: Config, model_path: str, data: Prepared):
        return ReferencePerplexity(cfg, data.extras) if cfg.eval.reference else None

    def samples(self, cfg: Config, data: Prepared) -> list:
        checked = data.extras["checked"]
        return sample_conversations(checked.test or checked.validation, cfg.eval.samples)

    def generate(self, model, data: Prepared, samples: list) -> list[str]:
        tokens = data.extras["cfg"].eval.max_new_tokens
        return generate(model, data.extras["renderer"], [s[1] for s in samples], tokens)

    def write_samples(self, run: RunFolder, data: Prepared, samples: list, tuned: list[str]) -> None:
        write_conversation_samples(run, samples, tuned)

    @contextlib.contextmanager
    def training_context(self, run: RunFolder, model, precision: str, method):
        # Frozen base weights in bf16 (adapters under bf16 autocast): no per-step re-cast, half their memory.
        with frozen_weights_in_bf16(model, enabled=precision == "bf16" and method.is_adapter) as frozen:
            if frozen["layers"]:
                run.update_summary(frozen_weights_bf16=frozen)
            yield

    def save(self, run: RunFolder, trainer, data: Prepared) -> None:
        trainer.save_model(str(run.model_dir))
        if is_main():
            data.extras["tokenizer"].save_pretrained(str(run.model_dir))

    def validation_scores(self, trainer, model, data: Prepared, final: dict) -> dict:
        return {}  # the loss alone: run.json's validation_loss_after

    def score(self, model, data: Prepared, split: str) -> dict:
        pad_id = pad_token_id(data.extras["tokenizer"])
        return language_model_loss(model, getattr(data, split), pad_id, data.extras["cfg"].eval.batch_size)

    def describe_scores(self, scores: dict, before: dict | None) -> str:
        return f"loss {scores['loss']:.4f}" + (f" (before: {before['loss']:.4f})" if before else "")

    def collapse_alarm(self, data, validation: dict | None, generated: list[str]) -> dict | None:
        return generator_alarm(generated)

    def load_run(self, run: RunFolder, adapter_name: str = "default", into=None):
        return causal_lm_run.load_run(run, adapter_name, into)

    def evaluate(self, run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
        return causal_lm_run.evaluate(run, data, baseline, generations)

    def final_metric(self, summary, name: str) -> float | None:
        return summary.validation_loss_after if name == "loss" else None

    def report_figures(self, cfg: Config, data_report: dict, records: list[dict], evaluation) -> dict:
        from tunesmith.report import plots

        lengths = data_report.get("train_tokens", {})
        return {"plot-lengths": plots.length_histogram(lengths, "training examples: length in tokens")}

    def intended_use(self) -> str:
        return "completing prompts in the format it was trained on (the chat template or prompt format in the config)."

    def exportable(self, run: RunFolder):
        return causal_lm_run.exportable(run, self.auto_class)


CAUSAL_LM = register_task(CausalLMTask(), default=True)
