"""ORPO (Hong et al. 2024): the chosen answers' NLL minus beta x log sigmoid(log odds ratio), no reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.tasks.preference.losses.base import (
    LossSettings,
    LossSpec,
    Pairs,
    PreferenceLoss,
    TrlTwin,
    register_loss,
)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, switching form at -ln 2 to avoid cancellation."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(pairs: Pairs, pref: LossSettings) -> PreferenceLoss:
    """The odds use per-token average log-probabilities; `chosen_nll` is the mean token NLL of the chosen rows,
    which TRL takes over prompt and answer (the spec's prompt_nll: scoring.sequence_logps computes it so)."""
    chosen_average = (pairs.chosen / pairs.chosen_lengths.clamp(min=1)).float()
    rejected_average = (pairs.rejected / pairs.rejected_lengths.clamp(min=1)).float()
    log_odds = (chosen_average - rejected_average) - (_log1mexp(chosen_average) - _log1mexp(rejected_average))
    odds_term = pref.beta * F.logsigmoid(log_odds)
    return PreferenceLoss(
        pairs.chosen_nll - odds_term.mean(),
        pref.beta * chosen_average.detach(),
        pref.beta * rejected_average.detach(),
    )


register_loss(
    LossSpec(
        "orpo",
        orpo,
        reference=False,
        paired=True,
        prompt_nll=True,
        trl=TrlTwin("experimental.orpo.ORPOTrainer"),
    )
)
