"""Preference losses, registered by name: one module each, ending in one `register_loss(LossSpec(...))` call.

A loss is a plain function of per-sequence log-probabilities (`Pairs` for chosen/rejected pairs, `Answers` for
unpaired answers labelled desirable or not) and the `preference:` settings, returning a `PreferenceLoss`; each
follows TRL 1.16's trainer code term for term, so a run here and a run there optimise the same objective. Its `LossSpec` says what the trainer must
give it (a reference model's log-probabilities, pairs or unpaired answers, the chosen rows' NLL over the prompt),
which `preference.*` settings it reads, and which TRL trainer it equals term for term: tests/test_preference.py
compares the loss, the rewards and the gradients with that trainer's on one batch, one row per registered loss.
Adding a loss: a module here and its name in the import line at the bottom (docs/architecture.md).
"""

from __future__ import annotations

from tunesmith.tasks.preference.losses import dpo, ipo, kto, orpo, simpo  # noqa: E402,F401  (each registers itself)
from tunesmith.tasks.preference.losses.base import (
    LOSSES,
    Answers,
    LossSettings,
    LossSpec,
    Pairs,
    PreferenceLoss,
    TrlTwin,
    get_loss,
    names,
    register_loss,
    sigmoid_loss,
    with_sft,
)

__all__ = [
    "Answers",
    "LOSSES",
    "LossSettings",
    "LossSpec",
    "Pairs",
    "PreferenceLoss",
    "TrlTwin",
    "get_loss",
    "names",
    "register_loss",
    "sigmoid_loss",
    "with_sft",
]
