"""IPO (Azar et al. 2023, eq. 17): a squared loss on the per-token log-ratio margin, with beta as tau."""

from __future__ import annotations

from tunesmith.tasks.preference.losses.base import (
    LossSettings,
    LossSpec,
    Pairs,
    PreferenceLoss,
    TrlTwin,
    register_loss,
)


def ipo(pairs: Pairs, pref: LossSettings) -> PreferenceLoss:
    """Log-ratios per answer token, as TRL (confirmed with the authors), so that the squared loss does not grow
    with answer length."""
    chosen_logratios = pairs.chosen - pairs.ref_chosen
    rejected_logratios = pairs.rejected - pairs.ref_rejected
    chosen_per_token = chosen_logratios / pairs.chosen_lengths.clamp(min=1)
    delta = chosen_per_token - rejected_logratios / pairs.rejected_lengths.clamp(min=1)
    losses = (delta - 1 / (2 * pref.beta)) ** 2
    return PreferenceLoss(
        losses.mean(), pref.beta * chosen_logratios.detach(), pref.beta * rejected_logratios.detach()
    )


register_loss(
    LossSpec(
        "ipo",
        ipo,
        reference=True,
        paired=True,
        reads=("sft_weight",),
        trl=TrlTwin(
            "DPOTrainer",
            {"loss_type": ["ipo"]},
            sft=lambda w: {"loss_type": ["ipo", "sft"], "loss_weights": [1.0, w]},
        ),
    )
)
