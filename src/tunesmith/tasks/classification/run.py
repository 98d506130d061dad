"""A finished classification run: its classifier, `tunesmith predict` and `tunesmith eval` with it, and export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tunesmith.console import say
from tunesmith.data.labelled import check_labelled, read_inputs
from tunesmith.errors import TunesmithError
from tunesmith.methods import get_method
from tunesmith.methods.features import HEAD_FILE, FeatureHead, embed
from tunesmith.models.exportable import MAX_VALIDATION_EXAMPLES, Exportable, merged
from tunesmith.models.loading import default_cache_dir, load_model, resolve_model
from tunesmith.registry import get_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.classification import classifier_arguments, fresh_head_unless_same_labels, settings_of
from tunesmith.tasks.classification.metrics import (
    correct_sums,
    full_report,
    predicted,
    probabilities,
    write_evaluation,
)
from tunesmith.tasks.common import data_for_eval, prediction_target, stop_on_bad_rows
from tunesmith.tasks.modalities import label_target


class RunClassifier:
    """A finished run's classifier: the network (full weights, or base + adapter) or base + feature head."""

    def __init__(self, run: RunFolder):
        cfg = run.load_config()
        summary = run.read_summary()
        if summary.status != "finished" or not run.model_dir.exists():
            raise TunesmithError(
                f"{run.path}: no trained model yet (status: {summary.status}); finish training or --resume it"
            )
        self.cfg, self.labels = cfg, summary.labels
        self.multi_label = summary.get("multi_label", False)
        base_path = summary.base_model_path
        if not base_path or not Path(base_path).exists():
            base_path = resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))
        self.settings = settings_of(cfg)
        self.modality = get_task(cfg.task).modality(str(run.model_dir), cfg.model, cfg.data, self.settings)

        def load(weights: str, quantization):
            arguments = classifier_arguments(self.labels, self.multi_label)
            return load_model(weights, cfg.model, quantization, self.modality.auto_class, **arguments)

        self.head = None
        if (run.model_dir / HEAD_FILE).exists():  # features, or a head solved on mean-pooled states
            self.head, _ = FeatureHead.load(run.model_dir)
            self.model = load(base_path, None)
        else:  # full weights, or the adapter over its base: the method says which
            self.model = get_method(cfg.method.name).reload(load, run.model_dir, base_path, cfg.method)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()

    def logits(self, examples: list, batch_size: int, progress: bool = True) -> np.ndarray:
        from tqdm.auto import tqdm

        prepared = self.modality.prepare(examples, {}, self.multi_label, training=False)
        collator = self.modality.collator(self.model)
        if self.head is not None:
            features = embed(self.model, prepared.dataset, collator, batch_size, self.modality.name == "text")
            return self.head.logits(prepared.per_text(features))
        chunks = []
        dataset = prepared.dataset
        with torch.no_grad():
            for start in tqdm(
                range(0, len(dataset), batch_size), desc="predict", unit="batch", disable=not progress
            ):
                batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
                inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
                chunks.append(self.model(**inputs).logits.float().cpu().numpy())
        if not chunks:
            return np.zeros((0, len(self.labels)))
        # one row per input: with data.on_overflow windows, the mean of its windows' log-probabilities
        return prepared.text_scores(np.concatenate(chunks), self.multi_label)


def predict(
    run_dir: str | Path, source: str | Path, output: str | Path | None = None, batch_size: int = 32
) -> dict:
    """Label every row of a table (or every file in a folder); write label and probabilities as JSONL or CSV."""
    run = RunFolder.open(run_dir)
    classifier = RunClassifier(run)
    cfg = classifier.cfg
    examples, problems = read_inputs(str(source), cfg.data, classifier.settings, classifier.modality.name)
    if cfg.data.on_overflow == "drop":  # (text only: images and audio are never over-long)
        cfg.data.on_overflow = "truncate"  # every input gets an answer; over-long ones are counted below
    target = prediction_target(run, source, output, problems, "predicted", (".jsonl", ".csv"))
    probs = probabilities(classifier.logits(examples, batch_size), classifier.multi_label)
    chosen = predicted(probs, classifier.multi_label)
    records = []
    for example, row, pick in zip(examples, probs, chosen, strict=True):
        names = classifier.labels
        label = [names[i] for i, on in enumerate(pick) if on] if classifier.multi_label else names[int(pick)]
        records.append(
            {
                "input": example.where,
                "label": label,
                "probabilities": {name: round(float(p), 6) for name, p in zip(names, row, strict=True)},
            }
        )
    _write_predictions(target, records, classifier.labels)
    return {"output": str(target), "rows": len(records)}


def _write_predictions(target: Path, records: list[dict], labels: list[str]) -> None:
    import csv

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        if target.suffix.lower() == ".csv":
            writer = csv.writer(handle)
            writer.writerow(["input", "label", *[f"p_{name}" for name in labels]])
            for record in records:
                label = record["label"]
                writer.writerow(
                    [
                        record["input"],
                        "|".join(label) if isinstance(label, list) else label,
                        *record["probabilities"].values(),
                    ]
                )
        else:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    temporary.replace(target)


def evaluate(run: RunFolder, data, baseline: bool) -> dict:
    """Accuracy, precision/recall/F1 per class and averaged; with baseline, the pretrained body with a new head."""

    from transformers import set_seed

    cfg = run.load_config()
    summary = run.read_summary()
    labels = summary.labels
    data_cfg = data_for_eval(cfg.data, data)
    classifier = RunClassifier(run)
    # another file is read with the run's label set, in its order (the ids its head predicts)
    fields = classifier.settings.model_copy(update={"labels": labels}) if data else classifier.settings
    checked = stop_on_bad_rows(check_labelled(data_cfg, fields, classifier.modality.name), data_cfg)
    split = "data" if data else ("test" if checked.test else "validation")
    examples = checked.train if data else (checked.test or checked.validation)
    if not examples:
        raise TunesmithError(f"eval: no labelled examples in {data or 'the validation split'}")

    def scores(logits) -> dict:
        report = _report(classifier, examples, logits)
        return {k: v for k, v in report.items() if isinstance(v, float)} | {"per_class": report["per_class"]}

    tuned = scores(classifier.logits(_inputs(examples), cfg.eval.batch_size, progress=False))
    base = None
    if baseline:
        # The untouched base: the pretrained network with a new head for these labels, seeded as training seeded it.
        set_seed(cfg.train.seed)
        network = load_model(
            summary.base_model_path,
            cfg.model,
            None,
            classifier.modality.auto_class,
            **classifier_arguments(labels, classifier.multi_label),
        )
        fresh_head_unless_same_labels(network, summary.base_model_path, labels)
        classifier.model, classifier.head = network.to(classifier.device).eval(), None
        base = scores(classifier.logits(_inputs(examples), cfg.eval.batch_size, progress=False))
    return {"task": cfg.task, "split": split, "examples": len(examples), "tuned": tuned, "baseline": base}


def _inputs(examples: list) -> list:
    """The examples without their labels: the network sees the inputs only; the targets are scored here."""
    return [replace(e, labels=()) for e in examples]


def _report(classifier: RunClassifier, examples: list, logits) -> dict:
    multi = classifier.multi_label
    label_ids = {label: i for i, label in enumerate(classifier.labels)}
    targets = np.asarray([label_target(e, label_ids, multi) for e in examples])
    return full_report(targets, predicted(probabilities(logits, multi), multi), classifier.labels, multi)


def score_test(run: RunFolder, examples: list) -> dict:
    """The final model on the test split: evaluation.json and the confusion matrix show these (the validation
    split's move to *_validation.*, since the checkpoint was chosen on it); returns the headline numbers."""
    classifier = RunClassifier(run)
    logits = classifier.logits(_inputs(examples), classifier.cfg.eval.batch_size, progress=False)
    report = _report(classifier, examples, logits)
    for name in ("evaluation.json", "confusion_matrix.json", "confusion_matrix.png"):
        path = run.path / name
        if path.exists():
            path.replace(path.with_name(f"{path.stem}_validation{path.suffix}"))
    write_evaluation(report, run.path, classifier.multi_label, split="test")
    say(
        f"test: accuracy {report['accuracy']:.4f}, macro-F1 {report['f1_macro']:.4f} on {report['examples']} "
        "examples (held out: no checkpoint or setting was chosen on them)"
    )
    return {k: v for k, v in report.items() if isinstance(v, float)} | {"examples": report["examples"]}


def exportable(run: RunFolder) -> Exportable:
    """The merged classifier, probes of two shapes, and validation batches for the accuracy check."""
    summary = run.finished_summary("export")
    if (run.model_dir / HEAD_FILE).exists():
        raise TunesmithError(
            f"{run.path}: a {summary.method} run has no tuned network to export; its classifier is "
            "model/features_head.json over the unchanged base model"
        )
    classifier = RunClassifier(run)
    cfg, modality = classifier.cfg, classifier.modality
    model = merged(classifier.model)
    checked = check_labelled(
        cfg.data.model_copy(update={"on_error": "skip"}), classifier.settings, modality.name
    )
    label_ids = {label: i for i, label in enumerate(classifier.labels)}
    examples = (checked.validation or checked.train)[:MAX_VALIDATION_EXAMPLES]
    prepared = modality.prepare(examples, label_ids, classifier.multi_label, training=False)
    collate = modality.collator(model)
    batches = [
        collate([prepared.dataset[i] for i in range(s, min(s + 16, len(examples)))])
        for s in range(0, len(examples), 16)
    ]
    names = [name for name in batches[0] if name != "labels"]
    alone = collate([prepared.dataset[0]])  # one example at its own length: another sequence length
    probes = [{k: alone[k] for k in names}, {k: batches[0][k][:3] for k in names}]
    validation = [({k: b[k] for k in names}, b["labels"]) for b in batches]
    return Exportable(
        task=cfg.task,
        auto_class=modality.auto_class,
        metric_name="validation_accuracy",
        metric_sums=correct_sums,
        model=model,
        processor=modality.processor,
        input_names=names,
        probes=probes,
        validation=validation,
    )
