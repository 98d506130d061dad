"""Classification metrics: accuracy, precision/recall/F1 (macro and weighted), per class, confusion matrix; the
files a run folder keeps them in (evaluation.json, confusion_matrix.json and .png)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunesmith.report.plots import write_confusion_png


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predicted(probs: np.ndarray, multi_label: bool) -> np.ndarray:
    return (probs >= 0.5).astype(int) if multi_label else probs.argmax(axis=-1)


def summary_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """The scalar metrics logged at each evaluation (and usable as train.metric)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    metrics = {"accuracy": float(accuracy_score(labels, predictions))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predictions, average=average, zero_division=0
        )
        metrics |= {f"precision_{average}": precision, f"recall_{average}": recall, f"f1_{average}": f1}
    return {name: round(float(value), 6) for name, value in metrics.items()}


def full_report(labels: np.ndarray, predictions: np.ndarray, names: list[str], multi_label: bool) -> dict:
    """Scalars, a per-class table and the confusion matrix (rows: true label, columns: predicted)."""
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=None if multi_label else list(range(len(names))), zero_division=0
    )
    per_class = {
        name: {
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    if multi_label:
        matrix = multilabel_confusion_matrix(labels, predictions).tolist()  # per label: [[tn, fp], [fn, tp]]
    else:
        matrix = confusion_matrix(labels, predictions, labels=list(range(len(names)))).tolist()
    return {
        **summary_metrics(labels, predictions),
        "examples": int(len(labels)),
        "per_class": per_class,
        "labels": names,
        "confusion_matrix": matrix,
    }


def write_evaluation(report: dict, folder: Path, multi_label: bool, split: str = "validation") -> None:
    """evaluation.json, confusion_matrix.json and (single-label) confusion_matrix.png in the run folder."""
    (folder / "evaluation.json").write_text(json.dumps({"split": split, **report}, indent=2))
    matrix = {
        "labels": report["labels"],
        "rows": "true label",
        "columns": "predicted label",
        "matrix": report["confusion_matrix"],
    }
    (folder / "confusion_matrix.json").write_text(json.dumps(matrix, indent=2))
    if not multi_label:
        title = f"{split}: accuracy {report['accuracy']:.4f}, macro-F1 {report['f1_macro']:.4f}"
        write_confusion_png(
            report["confusion_matrix"], report["labels"], folder / "confusion_matrix.png", title
        )


def correct_sums(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(correct predictions, examples); multi-label rows count when the whole thresholded label set is right."""
    if labels.ndim == 2:
        return float(((logits > 0) == (labels > 0.5)).all(axis=1).sum()), len(labels)
    return float((logits.argmax(axis=-1) == labels).sum()), len(labels)


CLASSIFICATION_METRICS = ["accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"]
