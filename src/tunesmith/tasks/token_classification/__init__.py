"""token-classification: a tag per word (named entities: PER, LOC, ORG, ...) for encoder models (BERT, MiniLM).

Everything this task needs lives in this package: its config section (settings.py), its data (data.py), words to
sub-tokens and back (tokens.py), its scores (metrics.py) and its finished runs (run.py). It trains through the one
pipeline (tasks/pipeline.py) and is registered by the last line below.
"""

from __future__ import annotations

from transformers import Trainer

from tunesmith.config import Config
from tunesmith.console import is_main, say
from tunesmith.models.anatomy import transformer_blocks
from tunesmith.models.heads import fresh_head_unless_same_labels
from tunesmith.models.loading import load_tokenizer
from tunesmith.registry import register_section, register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.base import Rung, Task, head_rungs
from tunesmith.tasks.pipeline import Prepared
from tunesmith.tasks.token_classification import metrics, tokens
from tunesmith.tasks.token_classification.data import check_tagged
from tunesmith.tasks.token_classification.settings import TokenClassificationConfig
from tunesmith.training.callbacks import TokenCounter
from tunesmith.training.loop import (
    AtomicCheckpoints,
    point_trackers_at,
    quiet,
    standard_callbacks,
    training_arguments,
)

SECTION = "token_classification"


class TaggerTrainer(AtomicCheckpoints, Trainer):
    """transformers' Trainer with atomic checkpoints; the loss is the model's own (cross-entropy, -100 ignored)."""


class TokenClassificationTask(Task):
    name = pipeline_tag = starter = "token-classification"
    summary = "a tag per word: named entities (PER, LOC, ORG, ...) as BIO tags or character spans"
    provides = frozenset()  # no "labels": features fits one label per text, not one per word
    default_overflow = "truncate"
    verbs = frozenset({"predict"})
    auto_class = "AutoModelForTokenClassification"
    plan_kind = "classifier"
    selection_metric = (
        "f1",
        "entity-level F1 (seqeval): an entity counts when its type and both ends are right",
    )
    sweep_metrics = tuple(f"eval_{m}" for m in metrics.ENTITY_METRICS) + ("eval_loss",)
    table_fields = frozenset({"tokens", "tags"})

    def config_problems(self, cfg: Config) -> list[str]:
        if cfg.data.on_overflow in ("drop", "head_tail", "windows"):
            return [
                f"data.on_overflow: {cfg.data.on_overflow} does not apply to token-classification; words past "
                "data.max_length are counted and predicted O (truncate)"
            ]
        return []

    def check_data(self, data):
        """The data with the section's default field names (validated_data reads the run's own section)."""
        return check_tagged(data, TokenClassificationConfig())

    def validated_data(self, cfg: Config):
        from tunesmith.tasks.common import bad_rows_error

        checked = check_tagged(cfg.data, cfg.section(SECTION))
        if checked.problems and cfg.data.on_error == "stop":
            raise bad_rows_error(checked)
        return checked

    # -- the pipeline's hooks ---------------------------------------------------------------------------------
    def prepare(self, cfg: Config, checked, model_path: str, cache_dir) -> Prepared:
        tokenizer = load_tokenizer(model_path, cfg.model)
        labels = checked.report["labels"]
        tag_ids = {tag: i for i, tag in enumerate(labels)}
        settings = cfg.section(SECTION)
        limit = tokens.max_tokens(cfg, tokenizer)
        splits = {
            name: tokens.encode(tokenizer, examples, tag_ids, limit, settings.label_all_subtokens)
            for name, examples in (
                ("train", checked.train),
                ("validation", checked.validation),
                ("test", checked.test),
            )
        }
        report = checked.report | {"preprocessing": {name: e.report for name, e in splits.items()}}
        return Prepared(
            train=splits["train"].rows,
            validation=splits["validation"].rows,
            test=splits["test"].rows,
            report=report,
            lengths=[len(row["input_ids"]) for row in splits["train"].rows],
            extras={"tokenizer": tokenizer, "labels": labels, "checked": checked, "encoded": splits},
        )

    def print_data_summary(self, report: dict) -> None:
        say(
            f"data: {report['rows_read']} rows read, {report['bad_rows']} bad, {report.get('duplicates_removed', 0)} "
            f"duplicates removed; {report['train_examples']} train / {report['validation_examples']} validation"
            + (f" / {report['test_examples']} test" if report.get("test_examples") else "")
            + f" sentences; entity types {', '.join(report['types'])}"
        )
        if report.get("iob1_starts_rewritten"):
            say(
                f"data: {report['iob1_starts_rewritten']} entities began with I- (scheme iob1) and were read as B-"
            )
        for split, counts in report["entities"].items():
            say(f"data: {split} entities " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        for split, encoded in report["preprocessing"].items():
            if encoded["words_unseen"]:
                say(
                    f"data: {encoded['words_unseen']} {split} word(s) in {encoded['examples_cut']} sentence(s) lie past "
                    f"max_length={encoded['max_length']} tokens: never trained on, predicted O (raise data.max_length)"
                )

    def build_model(self, cfg: Config, model_path: str, method, data: Prepared):
        from tunesmith.tasks.token_classification.run import load_tagging_model

        model = load_tagging_model(model_path, cfg, data.extras["labels"])
        data.extras["head"] = fresh_head_unless_same_labels(model, model_path, data.extras["labels"])
        return method.apply(model, cfg.method)

    def build_trainer(self, cfg, run, model, data: Prepared, precision, callbacks, resuming, checkpointing):
        collator = tokens.TaggingCollator(data.extras["tokenizer"].pad_token_id or 0)
        counter = TokenCounter(collator)
        has_validation = bool(data.validation)
        fsdp_layer = type(transformer_blocks(model)[0]).__name__ if cfg.train.distributed == "fsdp" else None
        args = training_arguments(
            cfg, run, len(data.train), has_validation, precision, resuming, fsdp_layer, checkpointing
        )
        args.prediction_loss_only = False  # the metrics need predictions: argmax ids only, never the logits
        point_trackers_at(run, cfg)
        trainer = TaggerTrainer(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=data.train,
            eval_dataset=data.validation or None,
            compute_metrics=metrics.trainer_metrics(data.extras["labels"]),
            preprocess_logits_for_metrics=metrics.argmax_logits,
            callbacks=standard_callbacks(cfg, run, counter, callbacks, has_validation),
        )
        quiet(trainer)
        trainer.counter = counter
        return trainer, counter

    def summary_fields(self, cfg: Config, data: Prepared) -> dict:
        return {"labels": data.extras["labels"], "head": data.extras["head"]}

    def forgetting_probe(self, cfg: Config, model_path: str, data: Prepared):
        if not cfg.eval.reference:
            return None
        from tunesmith.tasks.common import LinearProbeCheck
        from tunesmith.tasks.modalities import TextModality

        return LinearProbeCheck(cfg, TextModality(model_path, cfg.model, cfg.data))

    def save(self, run: RunFolder, trainer, data: Prepared) -> None:
        trainer.save_model(str(run.model_dir))
        if is_main():
            data.extras["tokenizer"].save_pretrained(str(run.model_dir))

    def score(self, model, data: Prepared, split: str) -> dict:
        examples = getattr(data.extras["checked"], split)
        encoded = data.extras["encoded"][split]
        collator = tokens.TaggingCollator(data.extras["tokenizer"].pad_token_id or 0)
        ids = tokens.predict_ids(model, encoded.rows, collator, 32)
        words = [len(e.words) for e in examples]
        predicted = tokens.word_predictions(ids, encoded.word_ids, words, data.extras["labels"])
        return metrics.entity_scores([list(e.tags) for e in examples], predicted)

    def describe_scores(self, scores: dict, before: dict | None) -> str:
        line = (
            f"entity F1 {scores['f1']:.4f} (precision {scores['precision']:.4f}, recall {scores['recall']:.4f}) "
            f"on {scores['entities']} entities"
        )
        return line + (f"; before training {before['f1']:.4f}" if before else "")

    def validation_scores(self, trainer, model, data: Prepared, final: dict) -> dict:
        return self.score(model, data, "validation")  # over every word, as the test split is scored

    def collapse_alarm(self, data, validation: dict | None, generated: list[str]) -> dict | None:
        return metrics.collapse_alarm(validation) if validation else None

    def plan_ladder(self, cfg: Config) -> list[Rung]:
        return head_rungs("tag head")

    # -- a finished run -----------------------------------------------------------------------------------------
    def routes(self):
        from tunesmith.tasks.token_classification import routes

        return routes

    def load_run(self, run: RunFolder, adapter_name: str = "default", into=None):
        from tunesmith.tasks.token_classification.run import Tagger

        return Tagger(run, adapter_name)

    def predict(self, run: RunFolder, source, output, batch_size: int) -> dict:
        from tunesmith.tasks.token_classification import run as finished

        return finished.predict(run, source, output, batch_size)

    def evaluate(self, run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
        from tunesmith.tasks.token_classification import run as finished

        return finished.evaluate(run, data, baseline)

    def exportable(self, run: RunFolder):
        from tunesmith.tasks.token_classification import run as finished

        return finished.exportable(run)

    def report_figures(self, cfg: Config, data_report: dict, records: list[dict], evaluation) -> dict:
        from tunesmith.report import plots

        return {
            "plot-metrics": plots.evaluation_metrics(records, list(metrics.ENTITY_METRICS)),
            "plot-classes": plots.class_counts(
                data_report.get("entities", {}).get("train", {}), "training entities per type"
            ),
        }

    def intended_use(self) -> str:
        return "tagging the entity types above in new text like the training data."


register_section(SECTION, TokenClassificationConfig)
TOKEN_CLASSIFICATION = register_task(TokenClassificationTask())
