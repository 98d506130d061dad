"""Settings the user left unset, chosen at run time for the method and the size of the data.

The validated Config is never changed: `choose` returns a copy for the recipe plus a record of every choice
(printed, and stored in run.json as `defaults`). Anything the user set (pydantic's `model_fields_set`) wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunesmith.config import Config
from tunesmith.console import say
from tunesmith.registry import get_method

# Kinds of model a task trains; the methods declare a learning rate for each (Method.learning_rates).
CLASSIFIER = "classifier"  # a pretrained body with a new, randomly initialised head
GENERATOR = "generator"  # a pretrained causal language model

TARGET_STEPS = {CLASSIFIER: 300, GENERATOR: 150}  # optimizer steps a small data set is trained for
EPOCH_RANGE = {CLASSIFIER: (3, 20), GENERATOR: (1, 5)}
EARLY_STOPPING_PATIENCE = 4  # evaluations without improvement on train.metric before stopping
CLASSIFIER_WARMUP = 0.1  # of all steps: a new head starts random, large early gradients reach the body


@dataclass(frozen=True)
class Choice:
    key: str  # the config key, e.g. train.learning_rate
    value: object
    why: str
    override: str = ""  # how to choose otherwise; default: set the key

    def line(self) -> str:
        override = self.override or f"set {self.key} to choose yourself"
        return f"default: {self.key} = {self.value} ({self.why}; {override})"


def choose(
    cfg: Config, train_rows: int, has_validation: bool, kind: str, metric: tuple[str, str] | None = None
) -> tuple[Config, list[Choice]]:
    """A copy of `cfg` with the unset training settings chosen for `kind`, the method and `train_rows`
    (`metric`: the task's own (train.metric, why) for a classifier, instead of macro-F1)."""
    user_set = _user_set(cfg)
    choices: list[Choice] = []
    learning_rate = get_method(cfg.method.name).default_learning_rate(kind, cfg.method)
    if "learning_rate" not in user_set and learning_rate is not None:
        choices.append(Choice("train.learning_rate", *learning_rate))
    if not user_set & {"epochs", "max_steps"}:
        choices += _training_length(cfg, train_rows, has_validation, kind)
    if kind == CLASSIFIER:
        if "metric" not in user_set and has_validation:
            name, why = metric or (
                "f1_macro",
                "macro-F1 weighs every class alike: a model that learned one class scores low",
            )
            choices.append(Choice("train.metric", name, why))
        if "warmup" not in user_set:
            why = "a tenth of all steps: the new head starts random"
            choices.append(Choice("train.warmup", CLASSIFIER_WARMUP, why))
    train = cfg.train.model_copy(update={c.key.removeprefix("train."): c.value for c in choices})
    return cfg.model_copy(update={"train": train}), choices


def _training_length(cfg: Config, train_rows: int, has_validation: bool, kind: str) -> list[Choice]:
    """Epochs from the number of rows (more on small data), one evaluation per epoch, early stopping."""
    user_set = _user_set(cfg)
    choices = []
    batch_size = cfg.train.batch_size
    if kind == CLASSIFIER and "batch_size" not in user_set:
        batch_size = 16 if train_rows >= 512 else 8
        why = f"{train_rows} training rows: {'16' if batch_size == 16 else '8, for more steps on small data'}"
        choices.append(Choice("train.batch_size", batch_size, why))
    steps_per_epoch = max(1, math.ceil(train_rows / batch_size) // cfg.train.grad_accum)
    low, high = EPOCH_RANGE[kind]
    epochs = min(high, max(low, math.ceil(TARGET_STEPS[kind] / steps_per_epoch)))
    why = (
        f"{train_rows} training rows, {steps_per_epoch} steps per epoch: about {TARGET_STEPS[kind]} steps, "
        f"between {low} and {high} epochs"
    )
    choices.append(Choice("train.epochs", float(epochs), why))
    if not has_validation:
        return choices
    if not user_set & {"eval_steps", "save_steps"}:
        evaluations = epochs if epochs >= 5 else 5  # enough points to stop early and to draw the curves
        every = max(1, steps_per_epoch * epochs // evaluations)
        why = "one evaluation per epoch" if evaluations == epochs else "five evaluations per run"
        choices.append(Choice("train.eval_steps", every, why))
    if "early_stopping_patience" not in user_set:
        why = "stop when train.metric has not improved for this many evaluations; the best checkpoint is kept"
        choices.append(Choice("train.early_stopping_patience", EARLY_STOPPING_PATIENCE, why))
    return choices


def _user_set(cfg: Config) -> set[str]:
    """train keys the user wrote; an explicit null (max_steps: null) means "the default", as the starters say."""
    return {key for key in cfg.train.model_fields_set if getattr(cfg.train, key) is not None}


def record(choices: list[Choice]) -> dict:
    """run.json's `defaults`: key -> {"value", "why"}."""
    return {
        c.key: {"value": c.value, "why": c.why + (f"; {c.override}" if c.override else "")} for c in choices
    }


def announce(choices: list[Choice]) -> None:
    for choice in choices:
        say(choice.line())
