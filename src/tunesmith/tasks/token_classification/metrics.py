"""Entity-level precision, recall and F1 (seqeval, the CoNLL-2003 definition: an entity counts when its type and
both its boundaries are right), overall and per type, and the collapse alarm of a tagger."""

from __future__ import annotations

from tunesmith.evaluation.collapse import alarm

ENTITY_METRICS = ("f1", "precision", "recall", "f1_macro", "accuracy")


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """{"f1", "precision", "recall" (micro over entities), "f1_macro" (mean over types), "accuracy" (words),
    "entities", "predicted_entities", "per_type": {type: {precision, recall, f1, support}}}."""
    from seqeval.metrics import accuracy_score, classification_report

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    types = {k: v for k, v in report.items() if not k.endswith(" avg")}
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    return {
        "f1": round(float(micro["f1-score"]), 6),
        "precision": round(float(micro["precision"]), 6),
        "recall": round(float(micro["recall"]), 6),
        "f1_macro": round(float(report.get("macro avg", {}).get("f1-score", 0.0)), 6),
        "accuracy": round(float(accuracy_score(gold, predicted)), 6),
        "entities": int(micro["support"]),
        "predicted_entities": sum(tag.startswith("B-") for row in predicted for tag in row),
        "per_type": {
            name: {
                "precision": round(float(v["precision"]), 6),
                "recall": round(float(v["recall"]), 6),
                "f1": round(float(v["f1-score"]), 6),
                "support": int(v["support"]),
            }
            for name, v in sorted(types.items())
        },
    }


def trainer_metrics(names: list[str]):
    """compute_metrics for the Trainer's evaluations: the tagged sub-tokens' predictions as entity tags."""

    def compute(evaluation) -> dict[str, float]:
        gold, predicted = [], []
        for ids, labels in zip(evaluation.predictions, evaluation.label_ids, strict=True):
            kept = labels != -100
            gold.append([names[i] for i in labels[kept]])
            predicted.append([names[i] for i in ids[kept]])
        scores = entity_scores(gold, predicted)
        return {name: scores[name] for name in ENTITY_METRICS}

    return compute


def argmax_logits(logits, labels):
    """Keep only each sub-token's best tag id: an evaluation never holds every logit of the split."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


TAGGER_CAUSES = [
    (
        "too few steps",
        "a new head on little data learns that most words are O before it learns any entity",
        "remove train.epochs and train.max_steps (epochs are chosen for the data size, with early stopping)",
    ),
    (
        "learning rate",
        "too low and the head stays near its start; too high and training falls back to O everywhere",
        "remove train.learning_rate to use the method's default (run.json: defaults)",
    ),
    (
        "the data",
        "tags that never mark an entity, or entities marked in only a few rows",
        "check the entity counts in data_report.json and the tags with `tunesmith data check`",
    ),
]


def collapse_alarm(scores: dict) -> dict | None:
    """A tagger that marks no entity at all while the split holds some."""
    if scores.get("entities", 0) >= 2 and scores.get("predicted_entities", 0) == 0:
        seen = f"the tuned model tags no entity in the {scores['entities']} entities of the validation split"
        return alarm("no entities", seen, TAGGER_CAUSES)
    return None
