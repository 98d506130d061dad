"""The forgetting check: score general reference text before and after training and report the drift."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import Config
from tunesmith.data.readers import read_rows
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.lm import language_model_loss


def read_reference_texts(path: str, field: str, limit: int) -> tuple[list[str], int]:
    """The first `limit` texts of a .txt file (one per non-empty line) or a table's `field`; and how many exist."""
    source = Path(path)
    if source.suffix.lower() == ".txt":
        if not source.is_file():
            raise TunesmithError(f"eval.reference: {source} not found; give a .txt file or a table")
        texts = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        texts = []
        for row in read_rows(source):
            value = None if row.data is None else row.data.get(field)
            if row.error or not isinstance(value, str) or not value.strip():
                problem = row.error or f"no text in field '{field}'"
                raise TunesmithError(
                    f"eval.reference: {row.where}: {problem}; fix the row or set eval.reference_field"
                )
            texts.append(value.strip())
    if not texts:
        raise TunesmithError(f"eval.reference: {source} has no text; give general text to score")
    return texts[:limit], len(texts)


@dataclass
class Reference:
    """Reference text tokenized into windows of at most max_length tokens (long texts are split, not cut)."""

    path: str
    rows: list[dict]
    texts_used: int
    texts_total: int

    @classmethod
    def load(cls, cfg: Config, encode) -> Reference:
        texts, total = read_reference_texts(
            cfg.eval.reference, cfg.eval.reference_field, cfg.eval.reference_max_examples
        )
        width = cfg.data.max_length
        rows = []
        for text in texts:
            ids = encode(text)
            for start in range(0, len(ids), width):
                window = ids[start : start + width]
                if len(window) > 1:
                    rows.append({"input_ids": window, "labels": window})
        return cls(cfg.eval.reference, rows, len(texts), total)

    def score(self, model, pad_token_id: int, batch_size: int) -> dict:
        return language_model_loss(model, self.rows, pad_token_id, batch_size)


@dataclass
class ProbeReference:
    """Classification's forgetting check: how well a linear probe on the encoder's pooled features solves a
    reference labelled task (5-fold cross-validated accuracy), before and after fine-tuning."""

    path: str
    prepared: object  # tasks.modalities.Prepared
    texts_used: int
    texts_total: int

    @classmethod
    def load(cls, cfg: Config, modality, fields) -> ProbeReference:
        """`fields`: a data.labelled.LabelSettings, the reference table's columns (its own label set, one label
        per row)."""
        from tunesmith.data.labelled import check_labelled
        from tunesmith.data.prepare import bad_rows_error

        settings = cfg.data.model_copy(
            update={
                "train_file": cfg.eval.reference,
                "validation_file": None,
                "validation_ratio": 0.0,
                "max_examples": None,
                "on_error": "stop",
            }
        )
        single = fields.model_copy(update={"labels": None, "multi_label": False})
        checked = check_labelled(settings, single, modality.name)
        if checked.problems:
            raise TunesmithError(f"eval.reference: {bad_rows_error(checked)}", checked.problems[:20])
        examples = checked.train[: cfg.eval.reference_max_examples]
        counts = Counter(example.labels[0] for example in examples)
        if len(counts) < 2 or min(counts.values()) < 5:
            raise TunesmithError(
                f"eval.reference: {cfg.eval.reference} needs at least 2 labels with 5 examples each for the probe "
                f"(found {dict(counts)})"
            )
        label_ids = {label: i for i, label in enumerate(sorted(counts))}
        prepared = modality.prepare(examples, label_ids, False, training=False)
        return cls(cfg.eval.reference, prepared, len(examples), len(checked.train))

    def score(self, model, collator, batch_size: int, text: bool, seed: int) -> dict:
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from tunesmith.methods.features import embed

        was_training = model.training
        features = embed(model, self.prepared.dataset, collator, batch_size, text, desc="probe")
        model.train(was_training)
        features = self.prepared.per_text(features)  # windows: one mean embedding per text
        targets = np.asarray(self.prepared.text_targets)
        folds = StratifiedKFold(
            n_splits=min(5, int(np.bincount(targets).min())), shuffle=True, random_state=seed
        )
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        accuracy = cross_val_score(probe, features, targets, cv=folds).mean()
        return {"accuracy": round(float(accuracy), 6), "examples": len(targets), "tokens": None}


def drift(before: dict, after: dict, threshold_percent: float, key: str = "perplexity") -> dict:
    """Relative change of the reference score, in percent (a word error rate's: in percentage points); a warning
    above the threshold."""
    if key in POINTS:  # a rate already: relative to a near-zero WER any change reads huge (from 0: undefined)
        change = 100.0 * (after[key] - before[key])
    else:
        change = 100.0 * (after[key] - before[key]) / before[key]
    # For perplexity and word error rate a rise is forgetting; for accuracy (the classification probe) a fall is.
    worse = -change if key == "accuracy" else change
    return {
        "metric": key,
        "before": before,
        "after": after,
        "drift_percent": round(change, 3),
        "unit": "points" if key in POINTS else "percent",
        "threshold_percent": threshold_percent,
        "warning": worse > threshold_percent,
    }


POINTS = {"wer"}  # scores whose drift is their change in percentage points


def replay_remedy(drift_percent: float, threshold_percent: float, share: float | None) -> str:
    """What to set against the drift measured: data.replay with a share, larger the further past the threshold
    (docs/evaluation.md measures 5% against the quickstart's forgetting); or a larger share than the run's."""
    if share:
        return f"raise data.replay.share from {share:g} to {min(0.3, 2 * share):g}"
    suggested = 0.05 if drift_percent <= 2 * threshold_percent else 0.1
    return (
        f"replay general text: data.replay: {{share: {suggested:g}}} (the base model's own answers, generated once "
        "before training)"
    )


def describe(result: dict, reference: str) -> str:
    metric = result["metric"]
    line = (
        f"forgetting check: reference {metric} {result['before'][metric]:.4g} -> {result['after'][metric]:.4g} "
        f"({result['drift_percent']:+.2f}{_unit(result)}) on {reference}"
        + (" (linear probe, 5-fold cross-validated)" if metric == "accuracy" else "")
    )
    if result["warning"]:
        line += (
            f"; warning: drift beyond {result['threshold_percent']}{_unit(result)}: the model may have forgotten general "
            "knowledge ("
            + (f"{result['remedy']}; or " if result.get("remedy") else "")
            + "lower the learning rate, train fewer steps, or use LoRA with a smaller rank)"
        )
    return line


def _unit(result: dict) -> str:
    return " points" if result.get("unit") == "points" else "%"
