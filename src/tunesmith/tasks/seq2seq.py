"""The text-to-text recipe for encoder-decoder models (T5, BART), read top to bottom."""

from __future__ import annotations

import json
import time

from transformers import set_seed

from tunesmith.config import Config
from tunesmith.console import is_main, say, world_size
from tunesmith.data.seq2seq import SourceEncoder, check_pairs, length_report, tokenize_pairs
from tunesmith.evaluation.seq2seq import generate_targets, target_loss
from tunesmith.evaluation.text_metrics import generation_scores
from tunesmith.methods import count_parameters, get_method
from tunesmith.models.loading import default_cache_dir, load_model, load_tokenizer, resolve_model
from tunesmith.registry import register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import defaults, seq2seq_run
from tunesmith.tasks.base import Task
from tunesmith.tasks.common import (
    decide_checkpointing,
    evaluation_logged_at,
    evaluation_of_final_weights,
    finish_run,
    resume_point,
    training_result,
)
from tunesmith.training.hardware import describe_hardware, library_versions, pick_precision
from tunesmith.training.loop import fit, stop_message
from tunesmith.training.seq2seq_loop import build_seq2seq_trainer

AUTO_CLASS = "AutoModelForSeq2SeqLM"


def tokenize_splits(checked, cfg: Config, encoder: SourceEncoder) -> tuple[dict, dict]:
    """Each split's rows and kept examples, and the data report with lengths and over-long counts per split."""
    splits, report = {}, {**checked.report, "over_max_length": {}}
    for name in ("train", "validation", "test"):
        rows, kept, over = tokenize_pairs(getattr(checked, name), cfg.data, encoder)
        splits[name] = (rows, kept)
        if name != "test" or checked.test:
            report["over_max_length"][name] = over
            report[f"{name}_tokens"] = length_report(rows, encoder.tokenizer.eos_token_id)
    report["stop_token_ids"] = encoder.stop_token_ids()
    return splits, report


def print_data_summary(report: dict) -> None:
    say(
        f"data: {report['rows_read']} rows read, {report['bad_rows']} bad, {report.get('duplicates_removed', 0)} "
        f"duplicates removed; {report['train_examples']} train / {report['validation_examples']} validation"
        + (f" / {report['test_examples']} test" if report.get("test_examples") else "")
    )
    for split, over in report["over_max_length"].items():
        action = "dropped" if over["sources"]["action"] == "drop" else "cut (EOS kept)"
        for side in ("sources", "targets"):
            if over[side]["count"]:
                say(
                    f"data: {over[side]['count']} {split} {side} longer than {over[side]['max_length']} "
                    f"tokens were {action}"
                )


def train(cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
    started = time.time()
    checked = SEQ2SEQ.validated_data(cfg)
    cache_dir = default_cache_dir(cfg.output.cache_dir)
    model_path = resolve_model(cfg.model, cache_dir)  # a missing model fails before a run folder exists
    encoder = SourceEncoder(load_tokenizer(model_path, cfg.model), cfg.data.source_prefix)
    run = RunFolder.for_training(cfg, default_name, resume)
    say(f"run folder: {run.path}")
    run.save_config(cfg)
    splits, report = tokenize_splits(checked, cfg, encoder)
    run.write_json(run.data_report, report)
    print_data_summary(report)
    (train_rows, _), (validation_rows, validation_kept) = splits["train"], splits["validation"]
    test_rows, test_kept = splits["test"]
    if not train_rows:
        raise seq2seq_run.nothing_left(cfg.data)

    # Settings left unset are chosen for the method and the data size; `cfg` stays as the user wrote it.
    run_cfg, choices = defaults.choose(cfg, len(train_rows), bool(validation_rows), defaults.GENERATOR)
    defaults.announce(choices)

    method = get_method(cfg.method.name)
    set_seed(cfg.train.seed)  # adapter initialisation is random: seed it, or two identical configs differ
    model = method.apply(load_model(model_path, cfg.model, auto_class=AUTO_CLASS), cfg.method)
    parameters = count_parameters(model)
    say(
        f"method {method.name}: {parameters['trainable']:,} trainable of {parameters['total']:,} parameters "
        f"({parameters['trainable_percent']}%)"
    )
    # The CPU bf16 probe measures a decoder's matrix shapes; an encoder-decoder takes the plain rule, as classifiers do.
    precision = pick_precision(cfg.train.precision, model.dtype)
    say(f"precision: {precision}")
    checkpointing = decide_checkpointing(run_cfg, model, None, precision)  # the estimate is for decoders only
    resume_from = resume_point(run) if resume else None

    trainer, counter = build_seq2seq_trainer(
        run_cfg,
        run,
        model,
        encoder,
        train_rows,
        validation_rows,
        [example.target for example in validation_kept],
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
        gradient_checkpointing=checkpointing,
        processes=world_size(),
        template=encoder.kind,
        stop_token_ids=encoder.stop_token_ids(),
        defaults=defaults.record(choices),
        hardware=describe_hardware(),
        versions=library_versions(),
    )
    if test_rows and cfg.eval.before_training and summary.test_before is None:
        before = test_scores(model, encoder, test_rows, test_kept, cfg)
        summary = run.update_summary(test_before=before)
    # Samples come from the test split when there is one: nothing was chosen on it.
    sample_rows, sample_kept = (test_rows, test_kept) if test_rows else (validation_rows, validation_kept)
    samples = list(zip(sample_rows, sample_kept, strict=True))[: cfg.eval.samples] if is_main() else []
    if samples and not resume:
        outputs = _generate(model, encoder, [row for row, _ in samples], cfg)
        run.write_json(run.path / "samples_base.json", {"outputs": outputs})

    set_seed(cfg.train.seed)  # the base's evaluation above must not change the data order
    output, stopped = fit(trainer, resume_from)
    train_seconds = counter.seconds
    before = evaluation_logged_at(trainer, 0)  # train.eval_on_start: evaluated inside the loop
    if before is not None and not resume:
        summary = run.update_summary(validation_loss_before=before["eval_loss"])
    if stopped:
        say(stop_message(trainer))
        run.update_summary(status="stopped", global_step=trainer.state.global_step)
        return finish_run(run, cfg, run.read_summary(), SEQ2SEQ)

    trainer.save_model(str(run.model_dir))
    if is_main():
        encoder.tokenizer.save_pretrained(str(run.model_dir))
    result = training_result(trainer, output, counter, train_seconds)
    if validation_rows:
        after = evaluation_of_final_weights(trainer) or trainer.evaluate()
        result["validation_loss_after"] = after["eval_loss"]
        result["validation"] = {
            k.removeprefix("eval_"): v
            for k, v in after.items()
            if k.startswith("eval_") and "runtime" not in k
        }
        say(f"validation after training: {_line(result['validation'])}")
    if test_rows:
        result["test"] = test_scores(model, encoder, test_rows, test_kept, cfg)
        say(
            f"test after training: {_line(result['test'])} on {len(test_rows)} test examples "
            "(held out: no checkpoint or setting was chosen on them)"
        )
    if samples:
        write_samples(run, samples, _generate(model, encoder, [row for row, _ in samples], cfg))
    result["wall_seconds"] = round(time.time() - started, 1)
    run.update_summary(**result)
    return finish_run(run, cfg, run.read_summary(), SEQ2SEQ)


def _line(scores: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if k in ("loss", "rougeL", "bleu"))


def _generate(model, encoder: SourceEncoder, rows: list[dict], cfg: Config) -> list[str]:
    sources = [row["input_ids"] for row in rows]
    return generate_targets(
        model,
        sources,
        encoder.tokenizer,
        encoder.stop_token_ids(),
        cfg.eval.max_new_tokens,
        cfg.eval.batch_size,
    )


def test_scores(model, encoder: SourceEncoder, rows: list[dict], kept: list, cfg: Config) -> dict:
    """Loss per target token on every row, ROUGE/BLEU on the first eval.generations of them."""
    scores = target_loss(model, rows, encoder.pad_token_id, cfg.eval.batch_size)
    count = min(len(rows), cfg.eval.generations)
    if count:
        outputs = _generate(model, encoder, rows[:count], cfg)
        generated = generation_scores([example.target for example in kept[:count]], outputs)
        scores |= {k: v for k, v in generated.items() if k != "examples"} | {"generated_examples": count}
    return scores


def write_samples(run: RunFolder, samples: list, tuned: list[str]) -> None:
    """samples.jsonl: held-out sources with their reference, the base model's target and the tuned one's."""
    base_file = run.path / "samples_base.json"
    base = json.loads(base_file.read_text())["outputs"] if base_file.exists() else [None] * len(samples)
    with run.samples.open("w", encoding="utf-8") as handle:
        for (_, example), before, after in zip(samples, base, tuned, strict=True):
            record = {
                "where": example.where,
                "prompt": example.source,
                "reference": example.target,
                "base": before,
                "tuned": after,
            }
            handle.write(json.dumps(record) + "\n")


class Seq2SeqTask(Task):
    name = "seq2seq"
    summary = "text-to-text fine-tuning of an encoder-decoder model (T5, BART): source in, target out"
    starter = "seq2seq"
    provides = frozenset()
    default_overflow = "truncate"
    verbs = frozenset({"generate", "predict"})
    route_group = "generation"  # /v1/completions: the prompt is the source
    pipeline_tag = "text2text-generation"
    table_fields = frozenset({"source", "target"})
    auto_class = AUTO_CLASS
    sweep_metrics = ("eval_loss", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_bleu")

    def config_problems(self, cfg: Config) -> list[str]:
        problems = []
        if cfg.train.class_weights or cfg.train.layer_lr_decay:
            problems.append("train.class_weights and train.layer_lr_decay are for classification tasks")
        if cfg.data.on_overflow in ("head_tail", "windows"):
            problems.append(
                f"data.on_overflow: {cfg.data.on_overflow} is for text-classification; seq2seq takes drop or truncate"
            )
        if cfg.data.packing:
            problems.append("data.packing is for causal-lm; seq2seq batches are padded per batch")
        if cfg.data.system_prompt:
            problems.append("data.system_prompt is for chat models; seq2seq takes data.source_prefix")
        if cfg.data.multi_label:
            problems.append("data.multi_label is supported for text-classification")
        if cfg.eval.reference:
            problems.append(
                "eval.reference (the forgetting check) is not measured for seq2seq yet; remove it"
            )
        return problems

    def check_data(self, data):
        return check_pairs(data)

    def train(self, cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
        return train(cfg, default_name, resume, callbacks)

    def load_run(self, run: RunFolder, adapter_name: str = "default", into=None):
        return seq2seq_run.load_run(run, adapter_name, into)

    def predict(self, run: RunFolder, source, output, batch_size: int) -> dict:
        return seq2seq_run.predict(run, source, output, batch_size)

    def evaluate(self, run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
        return seq2seq_run.evaluate(run, data, baseline, generations)

    def final_metric(self, summary, name: str) -> float | None:
        return (summary.validation or {}).get(name.removeprefix("eval_"))

    def report_figures(self, cfg: Config, data_report: dict, records: list[dict], evaluation) -> dict:
        from tunesmith.report import plots

        lengths = data_report.get("train_tokens", {})
        return {
            "plot-lengths": plots.length_histogram(lengths, "training sources: length in tokens"),
            "plot-metrics": plots.evaluation_metrics(records, ["rouge1", "rouge2", "rougeL", "bleu"]),
        }

    def intended_use(self) -> str:
        return "writing a target text for a source text like those in the training data (e.g. summaries, headlines)."

    def exportable(self, run: RunFolder):
        return seq2seq_run.exportable(run, self.auto_class)


SEQ2SEQ = register_task(Seq2SeqTask())
