"""seq2seq: text-to-text fine-tuning of encoder-decoder models (T5, BART).

Everything this task needs lives in this package: its config section `seq2seq:` (settings.py), its data (data.py),
its trainer (trainer.py), its scores (metrics.py) and its finished runs (run.py). It trains through the one
pipeline (tasks/pipeline.py) and is registered below.
"""

from __future__ import annotations

import json

from tunesmith.config import Config
from tunesmith.console import is_main, say
from tunesmith.models.anatomy import transformer_blocks
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.registry import register_section, register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.base import Task
from tunesmith.tasks.common import classifier_settings_problems, stop_on_bad_rows
from tunesmith.tasks.pipeline import Prepared
from tunesmith.tasks.seq2seq import run as seq2seq_run
from tunesmith.tasks.seq2seq.data import (
    Seq2SeqCollator,
    SourceEncoder,
    check_pairs,
    length_report,
    tokenize_pairs,
)
from tunesmith.tasks.seq2seq.metrics import generate_for, test_scores
from tunesmith.tasks.seq2seq.run import AUTO_CLASS
from tunesmith.tasks.seq2seq.settings import SECTION, Seq2SeqConfig
from tunesmith.tasks.seq2seq.trainer import EncoderDecoderTrainer
from tunesmith.training.loop import set_up_trainer


def tokenize_splits(checked, cfg: Config, encoder: SourceEncoder) -> tuple[dict, dict]:
    """Each split's rows and kept examples, and the data report with lengths and over-long counts per split."""
    splits, report = {}, {**checked.report, "over_max_length": {}}
    longest_target = cfg.section(SECTION).max_target_length
    for name in ("train", "validation", "test"):
        rows, kept, over = tokenize_pairs(getattr(checked, name), cfg.data, longest_target, encoder)
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


def _line(scores: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if k in ("loss", "rougeL", "bleu"))


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
    pipeline_tag = "text2text-generation"
    table_fields = frozenset({"source", "target"})
    auto_class = AUTO_CLASS
    sweep_metrics = ("eval_loss", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_bleu")

    def config_problems(self, cfg: Config) -> list[str]:
        problems = classifier_settings_problems(cfg)
        if cfg.data.on_overflow in ("head_tail", "windows"):
            problems.append(
                f"data.on_overflow: {cfg.data.on_overflow} is for text-classification; seq2seq takes drop or truncate"
            )
        if cfg.data.packing:
            problems.append("data.packing is for causal-lm; seq2seq batches are padded per batch")
        if cfg.data.system_prompt:
            problems.append("data.system_prompt is for chat models; seq2seq takes seq2seq.source_prefix")
        if cfg.eval.reference:
            problems.append(
                "eval.reference (the forgetting check) is not measured for seq2seq yet; remove it"
            )
        return problems

    def validated_data(self, cfg: Config):
        return stop_on_bad_rows(check_pairs(cfg.data, cfg.section(SECTION)), cfg.data)

    # -- the pipeline's hooks (tasks/pipeline.py) ------------------------------------------------------------
    def prepare(self, cfg: Config, checked, model_path: str, cache_dir) -> Prepared:
        encoder = SourceEncoder(load_tokenizer(model_path, cfg.model), cfg.section(SECTION).source_prefix)
        splits, report = tokenize_splits(checked, cfg, encoder)
        if not splits["train"][0]:
            raise seq2seq_run.nothing_left(cfg)
        rows = {name: rows for name, (rows, _) in splits.items()}
        kept = {name: examples for name, (_, examples) in splits.items()}
        # lengths None: the activation estimate (gradient checkpointing: auto) is for decoders only
        extras = {"encoder": encoder, "kept": kept, "cfg": cfg}
        return Prepared(rows["train"], rows["validation"], rows["test"], report, None, extras)

    def print_data_summary(self, report: dict) -> None:
        print_data_summary(report)

    def build_model(self, cfg: Config, model_path: str, method, data: Prepared):
        return method.apply(load_model(model_path, cfg.model, auto_class=AUTO_CLASS), cfg.method)

    def build_trainer(self, cfg, run, model, data: Prepared, precision, callbacks, resuming, checkpointing):
        encoder = data.extras["encoder"]
        references = [example.target for example in data.extras["kept"]["validation"]]
        layer_class = type(transformer_blocks(model)[0]).__name__ if cfg.train.distributed == "fsdp" else None
        return set_up_trainer(
            EncoderDecoderTrainer, cfg, run, model, Seq2SeqCollator(encoder.pad_token_id), data.train,
            data.validation, precision, callbacks, resuming, checkpointing, layer_class, encoder=encoder,
            references=references, generations=cfg.eval.train_generations, max_new_tokens=cfg.eval.max_new_tokens,
        )  # fmt: skip

    def summary_fields(self, cfg: Config, data: Prepared) -> dict:
        encoder = data.extras["encoder"]
        return {"template": encoder.kind, "stop_token_ids": encoder.stop_token_ids()}

    def samples(self, cfg: Config, data: Prepared) -> list:
        split = "test" if data.test else "validation"
        pairs = zip(getattr(data, split), data.extras["kept"][split], strict=True)
        return list(pairs)[: cfg.eval.samples]

    def generate(self, model, data: Prepared, samples: list) -> list[str]:
        return generate_for(
            model, data.extras["encoder"], [row for row, _ in samples], data.extras["cfg"].eval
        )

    def write_samples(self, run: RunFolder, data: Prepared, samples: list, tuned: list[str]) -> None:
        write_samples(run, samples, tuned)

    def save(self, run: RunFolder, trainer, data: Prepared) -> None:
        trainer.save_model(str(run.model_dir))
        if is_main():
            data.extras["encoder"].tokenizer.save_pretrained(str(run.model_dir))

    def score(self, model, data: Prepared, split: str) -> dict:
        kept = data.extras["kept"][split]
        return test_scores(model, data.extras["encoder"], getattr(data, split), kept, data.extras["cfg"].eval)

    def describe_scores(self, scores: dict, before: dict | None) -> str:
        return _line(scores) + (f" (before: {_line(before)})" if before else "")

    def load_run(self, run: RunFolder, adapter_name: str = "default", into=None):
        return seq2seq_run.load_run(run, adapter_name, into)

    def predict(self, run: RunFolder, source, output, batch_size: int) -> dict:
        return seq2seq_run.predict(run, source, output, batch_size)

    def evaluate(self, run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
        return seq2seq_run.evaluate(run, data, baseline, generations)

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


register_section(
    SECTION,
    Seq2SeqConfig,
    moved_from=("data.source_field", "data.target_field", "data.source_prefix", "data.max_target_length"),
)
SEQ2SEQ = register_task(Seq2SeqTask())
