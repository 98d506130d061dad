"""The supervised fine-tuning recipe for causal language models, read top to bottom."""

from __future__ import annotations

import json
import time

from transformers import set_seed

from tunesmith.config import Config
from tunesmith.console import is_main, say, world_size
from tunesmith.data.collate import pack, pad_token_id
from tunesmith.data.prepare import check_data, tokenize_data, tokenize_examples
from tunesmith.data.templates import Renderer
from tunesmith.evaluation.collapse import describe as describe_collapse
from tunesmith.evaluation.collapse import generator_alarm
from tunesmith.evaluation.forgetting import Reference, drift, read_reference_texts
from tunesmith.evaluation.forgetting import describe as describe_drift
from tunesmith.evaluation.generation import generate
from tunesmith.evaluation.lm import language_model_loss
from tunesmith.methods import count_parameters, get_method
from tunesmith.models.loading import default_cache_dir, load_model, load_tokenizer, resolve_model
from tunesmith.registry import register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import causal_lm_run, defaults
from tunesmith.tasks.base import Rung, Task
from tunesmith.tasks.common import (
    decide_checkpointing,
    evaluation_logged_at,
    evaluation_of_final_weights,
    finish_run,
    resume_point,
    training_result,
)
from tunesmith.training.compile import compile_blocks, decide_compile, planned_tokens
from tunesmith.training.flops import training_flops
from tunesmith.training.hardware import check_weights_dtype, describe_hardware, library_versions
from tunesmith.training.loop import build_trainer, fit, stop_message
from tunesmith.training.precision import decide_precision, frozen_weights_in_bf16, measured_gflops


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


def train(cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
    started = time.time()
    checked = CAUSAL_LM.validated_data(cfg)
    cache_dir = default_cache_dir(cfg.output.cache_dir)
    model_path = resolve_model(cfg.model, cache_dir)  # a missing model fails before a run folder exists
    tokenizer = load_tokenizer(model_path, cfg.model)
    run = RunFolder.for_training(cfg, default_name, resume)
    say(f"run folder: {run.path}")
    run.save_config(cfg)
    renderer = Renderer(tokenizer, cfg.data.template)
    data = tokenize_data(checked, cfg.data, renderer, cache_dir)
    report = {**checked.report, **data["report"]}
    test_rows, test_over = tokenize_examples(checked.test, cfg.data, renderer)
    if checked.test:
        report["over_max_length"]["test"] = test_over
    run.write_json(run.data_report, report)
    print_data_summary(report)
    train_rows, validation_rows = data["train"], data["validation"]
    if cfg.data.packing:
        packed = pack(train_rows, cfg.data.max_length)
        say(
            f"data: packed {len(train_rows)} examples into {len(packed)} rows of up to {cfg.data.max_length} tokens"
        )
        train_rows = packed

    # Settings left unset are chosen for the method and the data size; `cfg` stays as the user wrote it.
    run_cfg, choices = defaults.choose(cfg, len(train_rows), bool(validation_rows), defaults.GENERATOR)
    defaults.announce(choices)

    method = get_method(cfg.method.name)
    set_seed(cfg.train.seed)  # adapter initialisation is random: seed it, or two identical configs differ
    model = method.apply(
        load_model(model_path, cfg.model, method.quantization_config(cfg.method)), cfg.method
    )
    parameters = count_parameters(model)
    say(
        f"method {method.name}: {parameters['trainable']:,} trainable of {parameters['total']:,} parameters "
        f"({parameters['trainable_percent']}%)"
    )
    precision_decision = decide_precision(cfg.train.precision, model.config, cache_dir)
    precision = precision_decision["precision"]
    check_weights_dtype(model.dtype, precision)  # model.dtype: float16 on a CPU, fp32 over bf16 weights
    say(f"precision: {precision_decision['reason']}")
    lengths = [len(r["input_ids"]) for r in train_rows]
    checkpointing = decide_checkpointing(run_cfg, model, max(lengths), precision)
    compiling = decide_compile(
        cfg.train.compile,
        planned_tokens(
            run_cfg.train.max_steps,
            run_cfg.train.epochs,
            run_cfg.train.batch_size * run_cfg.train.grad_accum,
            lengths,
        ),
        training_flops(model.config, 1, sum(lengths) / len(lengths), 1, frozen_base=method.is_adapter),
        measured_gflops(precision_decision),
    )
    if compiling["enabled"]:
        say(f"torch.compile: {compile_blocks(model)} blocks ({compiling['reason']})")
    resume_from = resume_point(run) if resume else None

    trainer, counter = build_trainer(
        run_cfg,
        run,
        model,
        tokenizer,
        train_rows,
        validation_rows,
        precision,
        callbacks,
        resuming=resume,
        gradient_checkpointing=checkpointing["enabled"],
    )
    summary = run.update_summary(
        status="running",
        task=cfg.task,
        base_model=cfg.model.name,
        base_model_path=model_path,
        method=method.name,
        is_adapter=method.is_adapter,
        parameters=parameters,
        precision=precision,
        precision_probe=precision_decision,
        gradient_checkpointing=checkpointing,
        compile=compiling,
        processes=world_size(),
        template=renderer.kind,
        stop_token_ids=renderer.stop_token_ids(),
        defaults=defaults.record(choices),
        hardware=describe_hardware(),
        versions=library_versions(),
    )
    pad_id = pad_token_id(tokenizer)
    reference = Reference.load(cfg, renderer.encode_text) if cfg.eval.reference else None
    if reference is not None and "reference_before" not in summary:  # a resumed run keeps its first score
        before = reference.score(model, pad_id, cfg.eval.batch_size)
        summary = run.update_summary(reference_before=before)
        say(
            f"forgetting check: reference perplexity before training {before['perplexity']:.4g} "
            f"({reference.texts_used} of {reference.texts_total} texts, {before['tokens']} tokens)"
        )
    if test_rows and cfg.eval.before_training and summary.test_before is None:
        summary = run.update_summary(
            test_before=language_model_loss(model, test_rows, pad_id, cfg.eval.batch_size)
        )
    # Samples come from the test split when there is one: nothing was chosen on it.
    samples = sample_conversations(checked.test or checked.validation, cfg.eval.samples) if is_main() else []
    if samples and not resume:
        outputs = generate(model, renderer, [s[1] for s in samples], cfg.eval.max_new_tokens)
        run.write_json(run.path / "samples_base.json", {"outputs": outputs})

    # Evaluation and rank-0-only sample generation above may have drawn random numbers on some ranks only;
    # re-seed so every rank (and a single-process run) shuffles the data identically.
    set_seed(cfg.train.seed)
    # Frozen base weights in bf16 (adapters under bf16 autocast): no per-step re-cast, half their memory.
    with frozen_weights_in_bf16(model, enabled=precision == "bf16" and method.is_adapter) as frozen:
        if frozen["layers"]:
            run.update_summary(frozen_weights_bf16=frozen)
        output, stopped = fit(trainer, resume_from)
    train_seconds = counter.seconds  # training steps only: evaluations and checkpoint writes are left out
    before = evaluation_logged_at(trainer, 0)  # train.eval_on_start: evaluated inside the loop, before step 1
    if before is not None and not resume:
        summary = run.update_summary(validation_loss_before=before["eval_loss"])
    if stopped:
        say(stop_message(trainer))
        run.update_summary(status="stopped", global_step=trainer.state.global_step)
        return finish_run(run, cfg, run.read_summary(), CAUSAL_LM)

    trainer.save_model(str(run.model_dir))
    if is_main():
        tokenizer.save_pretrained(str(run.model_dir))
    result = training_result(trainer, output, counter, train_seconds)
    if validation_rows:
        after = evaluation_of_final_weights(trainer) or trainer.evaluate()
        result["validation_loss_after"] = after["eval_loss"]
        before = summary.validation_loss_before
        say(
            f"validation loss after training: {after['eval_loss']:.4f}"
            + (f" (before: {before:.4f})" if before else "")
        )
    if test_rows:
        result["test"] = language_model_loss(model, test_rows, pad_id, cfg.eval.batch_size)
        before = summary.test_before
        say(
            f"test loss after training: {result['test']['loss']:.4f}"
            + (f" (before: {before['loss']:.4f})" if before else "")
            + f" on {len(test_rows)} test examples (held out: no checkpoint or setting was chosen on them)"
        )
    if samples:
        tuned = generate(model, renderer, [s[1] for s in samples], cfg.eval.max_new_tokens)
        write_samples(run, samples, tuned)
        alarm = generator_alarm(tuned)
        if alarm is not None:
            say(describe_collapse(alarm))
            result["collapse"] = alarm
    if reference is not None:
        after = reference.score(model, pad_id, cfg.eval.batch_size)
        result["forgetting"] = drift(summary.reference_before, after, cfg.eval.forgetting_threshold)
        result["forgetting"]["reference"] = reference.path
        say(describe_drift(result["forgetting"], reference.path))
    result["wall_seconds"] = round(time.time() - started, 1)
    run.update_summary(**result)
    return finish_run(run, cfg, run.read_summary(), CAUSAL_LM)


def write_samples(run: RunFolder, samples: list, tuned: list[str]) -> None:
    """samples.jsonl: each held-out prompt with its reference, the base model's answer and the tuned one's."""
    base_file = run.path / "samples_base.json"
    base_outputs = (
        json.loads(base_file.read_text())["outputs"] if base_file.exists() else [None] * len(samples)
    )
    with run.samples.open("w", encoding="utf-8") as handle:
        for (where, messages, reference), base, answer in zip(samples, base_outputs, tuned, strict=True):
            record = {
                "where": where,
                "prompt": messages[-1][1],
                "reference": reference,
                "base": base,
                "tuned": answer,
            }
            handle.write(json.dumps(record) + "\n")


HALF_EPOCH = 0.5  # the fewest epochs of the small adapter rungs in `tunesmith plan`


class CausalLMTask(Task):
    name = "causal-lm"
    summary = "supervised fine-tuning of a language model on prompts and answers (or plain text)"
    starter = "sft"
    provides = frozenset({"4-bit base"})
    default_overflow = "drop"
    verbs = frozenset({"generate", "merge"})
    route_group = "generation"
    pipeline_tag = "text-generation"
    auto_class = "AutoModelForCausalLM"
    sweep_metrics = ("eval_loss",)

    def config_problems(self, cfg: Config) -> list[str]:
        problems = []
        if cfg.train.class_weights or cfg.train.layer_lr_decay:
            problems.append("train.class_weights and train.layer_lr_decay are for classification tasks")
        if cfg.data.on_overflow in ("head_tail", "windows"):
            problems.append(
                f"data.on_overflow: {cfg.data.on_overflow} is for text-classification of single texts (no text pair)"
            )
        if cfg.data.multi_label:
            problems.append("data.multi_label is supported for text-classification")
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
        ]

    def validated_data(self, cfg: Config):
        checked = super().validated_data(cfg)
        if cfg.eval.reference:  # a bad reference file fails now, not after the model is loaded
            read_reference_texts(
                cfg.eval.reference, cfg.eval.reference_field, cfg.eval.reference_max_examples
            )
        return checked

    def train(self, cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
        return train(cfg, default_name, resume, callbacks)

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
