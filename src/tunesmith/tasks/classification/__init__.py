"""text-, image- and audio-classification: a label (or several) per example, trained through the one pipeline
(tasks/pipeline.py) over the hooks below; tasks/modalities.py holds what differs between text, image and audio.

This package owns the rest: its config section (settings.py, the `classification:` key), its trainer (trainer.py:
class weights, layer-wise LR decay), its metrics (metrics.py), its finished runs (run.py) and its route (routes.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from tunesmith.config import Config
from tunesmith.console import is_main, say, world_size
from tunesmith.data.labelled import check_labelled
from tunesmith.data.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES, TEXT_SUFFIXES
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.collapse import classifier_alarm
from tunesmith.methods.features import (
    FeatureHead,
    cached_embeddings,
    embed,
    head_inputs,
    linear_head,
    sentence_pooling,
    solve_head,
)
from tunesmith.models.heads import fresh_head_unless_same_labels
from tunesmith.models.loading import load_model, model_fingerprint
from tunesmith.registry import register_section, register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import defaults
from tunesmith.tasks.base import Rung, Task, head_rungs
from tunesmith.tasks.classification.metrics import (
    CLASSIFICATION_METRICS,
    full_report,
    predicted,
    probabilities,
    write_evaluation,
)
from tunesmith.tasks.classification.settings import ClassificationConfig
from tunesmith.tasks.classification.trainer import build_classification_trainer
from tunesmith.tasks.common import LinearProbeCheck, peak_memory_mb, stop_on_bad_rows
from tunesmith.tasks.modalities import AudioModality, ImageModality, TextModality
from tunesmith.tasks.pipeline import Prepared, Solver

SECTION = "classification"


def settings_of(cfg: Config) -> ClassificationConfig:
    """The run's `classification:` section (its defaults where the config has none)."""
    return cfg.section(SECTION)


def print_data_summary(report: dict) -> None:
    say(
        f"data: {report['rows_read']} rows read, {report['bad_rows']} bad, {report['duplicates_removed']} duplicates removed; "
        f"{report['train_examples']} train / {report['validation_examples']} validation, {len(report['labels'])} labels"
    )
    classes = report["train_classes"]
    say("data: train classes " + ", ".join(f"{k}={v}" for k, v in classes["counts"].items()))
    if classes["imbalance_ratio"] and classes["imbalance_ratio"] >= 3:
        say(
            f"data: warning: the largest class is {classes['imbalance_ratio']}x the smallest; "
            "consider train.class_weights: true and watch macro-F1"
        )
    for split in ("train", "validation"):
        text = report.get("preprocessing", {}).get(split, {})
        if text.get("over_max_length"):
            say(
                f"data: {text['over_max_length']} {split} example(s) longer than max_length={text['max_length']} "
                f"tokens were {text['action']}"
            )
        if "windows" in text:
            capped = (
                f"; training reads the first {text['max_windows']} of each text "
                f"({text['texts_over_max_windows']} text(s) have more, classification.max_windows)"
                if "max_windows" in text
                else ""
            )
            say(f"data: {split}: {text['windows']} windows of up to {text['max_length']} tokens{capped}")


def classifier_arguments(labels: list[str], multi_label: bool) -> dict:
    """from_pretrained arguments that size the new head from the data and make the saved model predict names."""
    arguments = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "ignore_mismatched_sizes": True,  # a pretrained head for other classes is replaced
    }
    if multi_label:
        arguments["problem_type"] = "multi_label_classification"
    return arguments


SOLVED_HEAD = (
    "only a linear head trains and no learning rate, epochs or max_steps was set: the head is solved by "
    "logistic regression on what it reads from the frozen body (as features does) and loaded as its weights"
)
SOLVED_HEAD_OVERRIDE = "set train.learning_rate to train it by gradient steps instead"
HEAD_SOLVED = defaults.Choice("method", "head solved", SOLVED_HEAD, SOLVED_HEAD_OVERRIDE)
MEAN_POOLED_HEAD = (
    "the body is a sentence encoder that pools by the mean of its token states (its 1_Pooling config): the "
    "linear head reads that mean, not BERT's pooler (a dense layer on the first token that sentence training "
    "left as pretraining made it), and is stored as model/features_head.json over the unchanged body"
)


HEAD_READS_MEAN = defaults.Choice(
    "head input", "mean of token states", MEAN_POOLED_HEAD, SOLVED_HEAD_OVERRIDE
)


def solved(run: RunFolder, data: Prepared, result: dict) -> dict:
    """A solved fit's model gets its processor beside it; run.json gets the fit's peak memory; a collapse alarm
    goes to the pipeline, which says and records it."""
    if is_main() and result.get("status") == "finished":
        data.extras["modality"].save(run.model_dir)
    data.extras["alarm"] = result.pop("collapse", None)
    return result | {"peak_memory_mb": peak_memory_mb()}


def solvable_head(model, cfg: Config) -> bool:
    """Only the model's single linear head trains, and the user chose no way to train it by gradient steps."""
    head = linear_head(model)
    if (
        head is None
        or world_size() > 1
        or cfg.train.model_fields_set & {"learning_rate", "epochs", "max_steps"}
    ):
        return False
    in_head = {id(p) for p in head.parameters()}
    return all(id(p) in in_head for p in model.parameters() if p.requires_grad)


def fit_solved_head(cfg, run, model, modality, train_set, validation_set) -> dict:
    """The head as a logistic regression on the frozen body's outputs, loaded as the head's weights."""
    started = time.time()
    collator = modality.collator(model)
    train_inputs = head_inputs(model, train_set.dataset, collator, cfg.eval.batch_size)
    targets = np.asarray(train_set.targets)
    solve_head(model, train_inputs, targets, cfg.method, settings_of(cfg).multi_label, cfg.train.seed)
    say(f"head: solved on {train_inputs.shape[0]} training inputs of size {train_inputs.shape[1]}")
    if is_main():
        model.save_pretrained(str(run.model_dir))
    result = {"status": "finished", "train_seconds": round(time.time() - started, 1), "global_step": 0}
    if len(validation_set.dataset):
        inputs = torch.as_tensor(head_inputs(model, validation_set.dataset, collator, cfg.eval.batch_size))
        with torch.no_grad():
            logits = linear_head(model)(inputs.to(linear_head(model).weight.dtype)).float().numpy()
        result |= evaluate_logits(
            cfg,
            run,
            validation_set.text_scores(logits, settings_of(cfg).multi_label),
            np.asarray(validation_set.text_targets),
            model.config.id2label,
        )
        record = {"step": 0, **{f"eval_{k}": v for k, v in result["validation"].items()}}
        run.metrics.write_text(json.dumps(record) + "\n")
    return result


def evaluate_logits(cfg: Config, run: RunFolder, logits, targets, id2label) -> dict:
    """Write evaluation.json and the confusion matrix (one row of logits per text); return the headline numbers."""
    names = [id2label[i] for i in range(len(id2label))]
    multi_label = settings_of(cfg).multi_label
    predictions = predicted(probabilities(logits, multi_label), multi_label)
    report = full_report(targets, predictions, names, multi_label)
    if is_main():
        write_evaluation(report, run.path, multi_label)
    say(
        f"validation: accuracy {report['accuracy']:.4f}, macro-F1 {report['f1_macro']:.4f} "
        f"on {report['examples']} examples (run folder: evaluation.json, confusion_matrix.png)"
    )
    result = {"validation": {k: report[k] for k in report if isinstance(report[k], float)}}
    alarm = classifier_alarm(targets, predictions, names, report["f1_macro"], multi_label)
    if alarm is not None:  # said and recorded by the pipeline (ClassificationTask.collapse_alarm)
        result["collapse"] = alarm
    return result


def fit_features(cfg, run, model, modality, train_set, validation_set, model_path, cache_dir) -> dict:
    """Embed every example once with the frozen network (cached), then fit a scikit-learn classifier."""
    if world_size() > 1:
        raise TunesmithError("method.name: features runs in one process; drop --nproc")
    collator = modality.collator(model)
    settings = [
        cfg.task,
        model_fingerprint(model_path),
        cfg.data.max_length,
        cfg.data.on_overflow,
        settings_of(cfg).clip_seconds,
    ]

    def features_of(prepared, examples_key):
        def compute():
            return embed(model, prepared.dataset, collator, cfg.eval.batch_size, modality.name == "text")

        return cached_embeddings(cache_dir, [*settings, examples_key], compute)

    started = time.time()
    train_features, cached = features_of(train_set, _dataset_key(train_set))
    say(
        f"features: {train_features.shape[0]} train embeddings of size {train_features.shape[1]}"
        + (" (cached)" if cached else "")
    )
    head, _ = FeatureHead.fit(  # with windows, a text's embedding is the mean of its windows'
        train_set.per_text(train_features),
        np.asarray(train_set.text_targets),
        cfg.method,
        settings_of(cfg).multi_label,
        cfg.train.seed,
    )
    seconds = time.time() - started
    run.model_dir.mkdir(parents=True, exist_ok=True)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    head.save(run.model_dir, labels, {"pooling": "mean" if modality.name == "text" else "pooler-or-mean"})
    result = {"status": "finished", "train_seconds": round(seconds, 1), "global_step": 0}
    if len(validation_set.dataset):
        validation_features, _ = features_of(validation_set, _dataset_key(validation_set))
        logits = head.logits(validation_set.per_text(validation_features))
        result |= evaluate_logits(
            cfg, run, logits, np.asarray(validation_set.text_targets), model.config.id2label
        )
        record = {"step": 0, **{f"eval_{k}": v for k, v in result["validation"].items()}}
        run.metrics.write_text(json.dumps(record) + "\n")
    return result


def _dataset_key(prepared) -> str:
    """Token ids for text; for files their path, size and modification time (an edited file is re-embedded)."""
    items = getattr(prepared.dataset, "items", prepared.dataset)
    keyed = [
        item
        | (
            {"stat": [Path(item["path"]).stat().st_size, Path(item["path"]).stat().st_mtime_ns]}
            if "path" in item
            else {}
        )
        for item in items
    ]
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


class ClassificationTask(Task):
    """One label (or several) per example; the modality (text, image, audio) says how inputs become tensors."""

    provides = frozenset({"labels"})
    no_replay = (
        "general text carries none of this task's labels; the forgetting check's linear probe (eval.reference) "
        "measures what the encoder kept, and method: features or last_n keeps the rest frozen"
    )
    default_overflow = "truncate"
    verbs = frozenset({"predict"})

    def __init__(self, name: str, modality: type, summary: str):
        self.name = self.starter = self.pipeline_tag = name
        self.modality, self.summary = modality, summary
        self.auto_class = modality.auto_class
        self.table_fields = frozenset({"label"} if modality.name == "text" else {modality.name, "label"})
        self.folder_suffixes = frozenset(
            {"text": TEXT_SUFFIXES, "image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}[modality.name]
        )

    def config_problems(self, cfg: Config) -> list[str]:
        problems = []
        text = self.modality.name == "text"
        if settings_of(cfg).multi_label and not text:
            problems.append("classification.multi_label is supported for text-classification")
        if cfg.data.on_overflow in ("head_tail", "windows") and (
            not text or settings_of(cfg).text_pair_field
        ):
            problems.append(
                f"data.on_overflow: {cfg.data.on_overflow} is for text-classification of single texts (no text pair)"
            )
        return problems

    def check_data(self, data):
        """The data with the section's default field names (validated_data reads the run's own section)."""
        return check_labelled(data, ClassificationConfig(), self.modality.name)

    def validated_data(self, cfg: Config):
        return stop_on_bad_rows(check_labelled(cfg.data, settings_of(cfg), self.modality.name), cfg.data)

    plan_kind = "classifier"

    def plan_ladder(self, cfg: Config) -> list[Rung]:
        # `head` is left off: it runs the frozen body over the data every epoch to fit what `features` fits once
        # (docs/classification-benchmark.md: head 79.8% in 6.3 min, features 97.0% in 0.9 min on BBC News).
        return [
            Rung(
                "features",
                {"method.name": "features"},
                0.0,
                "frozen embeddings and a logistic regression: one pass over the data, no epochs",
            ),
            *head_rungs("head"),
        ]

    # -- the pipeline's hooks (tasks/pipeline.py) ------------------------------------------------------------
    scores_test_before = False  # the test split is scored by the saved model, as `tunesmith predict` loads it

    def prepare(self, cfg: Config, checked, model_path: str, cache_dir) -> Prepared:
        modality = self.modality(model_path, cfg.model, cfg.data, settings_of(cfg))
        labels, multi_label = checked.report["labels"], settings_of(cfg).multi_label
        label_ids = {label: i for i, label in enumerate(labels)}
        train_set = modality.prepare(checked.train, label_ids, multi_label, training=True)
        validation_set = modality.prepare(checked.validation, label_ids, multi_label, training=False)
        report = checked.report | {
            "preprocessing": {"train": train_set.report, "validation": validation_set.report}
        }
        text = modality.name == "text"
        lengths = [len(row["input_ids"]) for row in train_set.dataset] if text else None
        extras = {"modality": modality, "labels": labels, "sets": (train_set, validation_set), "cfg": cfg}
        extras["cache_dir"] = cache_dir
        return Prepared(train_set.dataset, validation_set.dataset, checked.test, report, lengths, extras)

    def print_data_summary(self, report: dict) -> None:
        print_data_summary(report)

    def build_model(self, cfg: Config, model_path: str, method, data: Prepared):
        labels, modality = data.extras["labels"], data.extras["modality"]
        model = load_model(
            model_path,
            cfg.model,
            None,
            modality.auto_class,
            **classifier_arguments(labels, settings_of(cfg).multi_label),
        )
        data.extras["head"] = fresh_head_unless_same_labels(model, model_path, labels)
        return method.apply(model, cfg.method)

    def solver(self, cfg: Config, model_path: str, model, method, data: Prepared):
        """features (a logistic regression on frozen embeddings) and a lone linear head are solved, not trained."""
        e = data.extras
        modality, (train_set, validation_set), run = e["modality"], e["sets"], data.run
        solve = method.trains_network and solvable_head(model, cfg)
        mean_pooled = solve and modality.name == "text" and sentence_pooling(model_path) == "mean"
        if method.trains_network and not solve:
            return None
        sets = (train_set, validation_set)
        if not method.trains_network or mean_pooled:  # a logistic regression on embeddings: no rate or epochs
            choices = [] if not method.trains_network else [HEAD_SOLVED, HEAD_READS_MEAN]
            more = (model_path, e["cache_dir"])
            return Solver(
                choices, lambda: solved(run, data, fit_features(cfg, run, model, modality, *sets, *more))
            )
        return Solver(
            [HEAD_SOLVED], lambda: solved(run, data, fit_solved_head(cfg, run, model, modality, *sets))
        )

    def build_trainer(self, cfg, run, model, data: Prepared, precision, callbacks, resuming, checkpointing):
        train_set, validation_set = data.extras["sets"]
        return build_classification_trainer(
            cfg, run, model, train_set.dataset, validation_set, data.extras["modality"].collator(model),
            train_set.targets, model.config.num_labels, precision, settings_of(cfg).multi_label, callbacks,
            resuming=resuming, gradient_checkpointing=checkpointing,
        )  # fmt: skip

    def summary_fields(self, cfg: Config, data: Prepared) -> dict:
        e = data.extras
        return {"labels": e["labels"], "multi_label": settings_of(cfg).multi_label, "head": e["head"]}

    def forgetting_probe(self, cfg: Config, model_path: str, data: Prepared):
        if not cfg.eval.reference:
            return None
        # the reference table is read with the run's label (and text pair, file) columns
        return LinearProbeCheck(cfg, data.extras["modality"], settings_of(cfg))

    def save(self, run: RunFolder, trainer, data: Prepared) -> None:
        trainer.save_model(str(run.model_dir))
        if is_main():
            data.extras["modality"].save(run.model_dir)

    def validation_scores(self, trainer, model, data: Prepared, final: dict) -> dict:
        """Per text (a text's windows averaged): evaluation.json, the confusion matrix and the collapse alarm."""
        validation_set = data.extras["sets"][1]
        prediction = trainer.predict(validation_set.dataset, metric_key_prefix="final")
        logits = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        cfg = data.extras["cfg"]
        targets = np.asarray(validation_set.text_targets)
        result = evaluate_logits(
            cfg,
            data.run,
            validation_set.text_scores(logits, settings_of(cfg).multi_label),
            targets,
            model.config.id2label,
        )
        data.extras["alarm"] = result.get("collapse")
        return result["validation"]

    def collapse_alarm(self, data: Prepared, validation: dict | None, generated: list[str]) -> dict | None:
        return data.extras.get("alarm")  # found by evaluate_logits over the validation predictions

    def score(self, model, data: Prepared, split: str) -> dict:
        from tunesmith.tasks.classification.run import score_test

        return score_test(data.run, data.test) if is_main() else {}

    def describe_scores(self, scores: dict, before: dict | None) -> str:
        if "accuracy" not in scores:
            return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
        return f"accuracy {scores['accuracy']:.4f}, macro-F1 {scores['f1_macro']:.4f}"

    def routes(self):
        if self.modality.name != "text":  # /v1/classify takes text; image and audio runs have no route yet
            return None
        from tunesmith.tasks.classification import routes

        return routes

    def load_run(self, run: RunFolder, adapter_name: str = "default", into=None):
        from tunesmith.tasks.classification.run import RunClassifier

        return RunClassifier(run)

    def predict(self, run: RunFolder, source, output, batch_size: int) -> dict:
        from tunesmith.tasks.classification import run as classification_run

        return classification_run.predict(run.path, source, output, batch_size)

    def prediction_inputs(self, cfg: Config, examples: list) -> tuple[list[dict], list[str]] | None:
        pair = settings_of(cfg).text_pair_field
        if settings_of(cfg).multi_label or self.modality.name != "text" or not examples:
            return None
        rows = [{cfg.data.text_field: e.text, **({pair: e.text_pair} if pair else {})} for e in examples]
        return rows, [e.labels[0] for e in examples]

    def evaluate(self, run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
        from tunesmith.tasks.classification import run as classification_run

        return classification_run.evaluate(run, data, baseline)

    def report_figures(self, cfg: Config, data_report: dict, records: list[dict], evaluation) -> dict:
        from tunesmith.report import plots

        figures = {
            "plot-metrics": plots.evaluation_metrics(records, CLASSIFICATION_METRICS),
            "plot-classes": plots.class_counts(
                data_report.get("train_classes", {}).get("counts", {}), "training examples per class"
            ),
        }
        text = data_report.get("preprocessing", {}).get("train", {})
        if text.get("histogram"):
            figures["plot-lengths"] = plots.length_histogram(text, "training texts: length in tokens")
        if evaluation and not settings_of(cfg).multi_label:
            figures["plot-confusion"] = plots.confusion(evaluation["confusion_matrix"], evaluation["labels"])
        return figures

    def intended_use(self) -> str:
        return f"assigning one of the labels above to new {self.modality.name} inputs like the training data."

    def exportable(self, run: RunFolder):
        from tunesmith.tasks.classification import run as classification_run

        return classification_run.exportable(run)


register_section(
    SECTION,
    ClassificationConfig,
    moved_from=tuple(f"data.{key}" for key in ClassificationConfig.model_fields),
)
register_task(ClassificationTask("text-classification", TextModality, "a label per text (or text pair)"))
register_task(ClassificationTask("image-classification", ImageModality, "a label per image"))
register_task(ClassificationTask("audio-classification", AudioModality, "a label per audio clip"))
