"""The collapse alarm: a model that learned to give one answer whatever the input.

A classifier whose validation predictions are (nearly) all one class, or whose macro-F1 is at chance level;
a language model whose sampled generations are all empty or all the same. Each alarm names what was seen,
the likely causes, and what to try.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

ONE_CLASS_SHARE = 0.9  # predictions this concentrated on one class are "nearly all one class"


def classifier_alarm(
    targets, predictions, labels: list[str], f1_macro: float, multi_label: bool
) -> dict | None:
    """The alarm for one set of validation predictions (class ids, or 0/1 rows for multi-label), or None."""
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    if len(predictions) < 2 or len(labels) < 2:
        return None
    as_key = (lambda row: tuple(int(v) for v in row)) if multi_label else int
    predicted = Counter(as_key(p) for p in predictions)
    top, count = predicted.most_common(1)[0]
    share = count / len(predictions)
    true_share = sum(as_key(t) == top for t in targets) / len(targets)
    name = _answer_name(top, labels, multi_label)
    if share >= ONE_CLASS_SHARE and share - true_share >= 0.1:
        seen = (
            f"{share:.0%} of the {len(predictions)} validation predictions are {name} "
            f"(it is {true_share:.0%} of the true labels)"
        )
        return alarm("one class", seen, CLASSIFIER_CAUSES)
    chance = 1 / len(labels)
    if not multi_label and f1_macro <= chance:
        seen = (
            f"validation macro-F1 is {f1_macro:.3f}, no better than guessing among {len(labels)} classes "
            f"({chance:.3f})"
        )
        return alarm("chance level", seen, CLASSIFIER_CAUSES)
    return None


def generator_alarm(outputs: list[str]) -> dict | None:
    """The alarm for a language model's sampled generations (after training), or None."""
    if len(outputs) < 2:
        return None
    stripped = [text.strip() for text in outputs]
    if not any(stripped):
        return alarm("empty", f"all {len(outputs)} sampled generations are empty", GENERATOR_CAUSES)
    if len(set(stripped)) == 1:
        seen = f"all {len(outputs)} sampled generations are the same text: {stripped[0][:80]!r}"
        return alarm("identical", seen, GENERATOR_CAUSES)
    return None


CLASSIFIER_CAUSES = [
    (
        "learning rate",
        "too low and the new head barely moves from its random start; too high and training diverges to "
        "the majority class",
        "remove train.learning_rate to use the default for the method (run.json: defaults), or try 10x "
        "higher (lora, head) or 3x lower (full)",
    ),
    (
        "too few steps",
        "a few optimizer steps on small data leave the head near its random start",
        "remove train.epochs and train.max_steps (more epochs are chosen for small data, with early "
        "stopping), or raise train.epochs",
    ),
    (
        "class imbalance",
        "when one class dominates the training rows, predicting it everywhere is a cheap low loss",
        "set train.class_weights: true and keep train.metric: f1_macro",
    ),
]

GENERATOR_CAUSES = [
    (
        "learning rate",
        "too high and the model forgets how to write, repeating one answer or ending at once",
        "remove train.learning_rate to use the default for the method, or lower it 3-10x",
    ),
    (
        "too few steps or too little data",
        "the model has not learned the answers' format yet",
        "train longer (train.epochs) or add examples",
    ),
    (
        "the data",
        "many identical or empty answers in the training rows teach exactly that",
        "check the answers with `tunesmith data check`; make sure each row's answer field is the one you mean",
    ),
]


def alarm(kind: str, seen: str, causes: list[tuple[str, str, str]]) -> dict:
    """An alarm record: what kind of collapse, what was seen, and each likely (cause, why, what to try)."""
    return {
        "kind": kind,
        "seen": seen,
        "causes": [{"cause": c, "why": why, "try": fix} for c, why, fix in causes],
    }


def _answer_name(key, labels: list[str], multi_label: bool) -> str:
    if not multi_label:
        return f"'{labels[key]}'"
    chosen = [labels[i] for i, on in enumerate(key) if on]
    return "the label set {" + ", ".join(chosen) + "}" if chosen else "no label at all"


def describe(alarm: dict) -> str:
    """The one line said live: what was seen and where to read the causes."""
    causes = "; ".join(f"{c['cause']}: {c['try']}" for c in alarm["causes"])
    return f"COLLAPSE: {alarm['seen']}. Likely causes and what to try: {causes}"
