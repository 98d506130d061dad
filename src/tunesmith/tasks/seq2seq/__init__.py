"""The text-to-text recipe for encoder-decoder models (T5, BART), read top to bottom."""

from __future__ import annotations

import json

from tunesmith.config import Config
from tunesmith.console import is_main, say
from tunesmith.data.seq2seq import SourceEncoder, check_pairs, length_report, tokenize_pairs
from tunesmith.evaluation.seq2seq import generate_targets, target_loss
from tunesmith.evaluation.text_metrics import generation_scores
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.registry import register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.base import Task
from tunesmith.tasks.common import classifier_settings_problems
from tunesmith.tasks.pipeline import Prepared
from tunesmith.tasks.seq2seq import run as seq2seq_run
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
        problems = classifier_settings_problems(cfg)
        if cfg.data.on_overflow in ("head_tail", "windows"):
            problems.append(
                f"data.on_overflow: {cfg.data.on_overflow} is for text-classification; seq2seq takes drop or truncate"
            )
        if cfg.data.packing:
            problems.append("data.packing is for causal-lm; seq2seq batches are padded per batch")
        if cfg.data.system_prompt:
            problems.append("data.system_prompt is for chat models; seq2seq takes data.source_prefix")
        if cfg.eval.reference:
            problems.append(
                "eval.reference (the forgetting check) is not measured for seq2seq yet; remove it"
            )
        return problems

    def check_data(self, data):
        return check_pairs(data)

    # -- the pipeline's hooks (tasks/pipeline.py) ------------------------------------------------------------
    def prepare(self, cfg: Config, checked, model_path: str, cache_dir) -> Prepared:
        encoder = SourceEncoder(load_tokenizer(model_path, cfg.model), cfg.data.source_prefix)
        splits, report = tokenize_splits(checked, cfg, encoder)
        if not splits["train"][0]:
            raise seq2seq_run.nothing_left(cfg.data)
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
        references = [example.target for example in data.extras["kept"]["validation"]]
        return build_seq2seq_trainer(
            cfg, run, model, data.extras["encoder"], data.train, data.validation, references, precision,
            callbacks, resuming=resuming, gradient_checkpointing=checkpointing,
        )  # fmt: skip

    def summary_fields(self, cfg: Config, data: Prepared) -> dict:
        encoder = data.extras["encoder"]
        return {"template": encoder.kind, "stop_token_ids": encoder.stop_token_ids()}

    def samples(self, cfg: Config, data: Prepared) -> list:
        split = "test" if data.test else "validation"
        pairs = zip(getattr(data, split), data.extras["kept"][split], strict=True)
        return list(pairs)[: cfg.eval.samples]

    def generate(self, model, data: Prepared, samples: list) -> list[str]:
        return _generate(model, data.extras["encoder"], [row for row, _ in samples], data.extras["cfg"])

    def write_samples(self, run: RunFolder, data: Prepared, samples: list, tuned: list[str]) -> None:
        write_samples(run, samples, tuned)

    def save(self, run: RunFolder, trainer, data: Prepared) -> None:
        trainer.save_model(str(run.model_dir))
        if is_main():
            data.extras["encoder"].tokenizer.save_pretrained(str(run.model_dir))

    def score(self, model, data: Prepared, split: str) -> dict:
        kept = data.extras["kept"][split]
        return test_scores(model, data.extras["encoder"], getattr(data, split), kept, data.extras["cfg"])

    def describe_scores(self, scores: dict, before: dict | None) -> str:
        return _line(scores) + (f" (before: {_line(before)})" if before else "")

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
