"""SimPO (Meng et al. 2024): length-normalised log-probabilities as rewards, a target margin gamma, no reference."""

from __future__ import annotations

from tunesmith.tasks.preference.losses.base import (
    LossSettings,
    LossSpec,
    Pairs,
    PreferenceLoss,
    TrlTwin,
    register_loss,
    sigmoid_loss,
)


def simpo(pairs: Pairs, pref: LossSettings) -> PreferenceLoss:
    """TRL's CPOTrainer with loss_type="simpo" and cpo_alpha=0 (with sft_weight w: cpo_alpha=w, CPO-SimPO)."""
    chosen_average = pairs.chosen / pairs.chosen_lengths.clamp(min=1)
    rejected_average = pairs.rejected / pairs.rejected_lengths.clamp(min=1)
    logits = pref.beta * (chosen_average - rejected_average - pref.gamma / pref.beta)
    losses = sigmoid_loss(logits, pref.label_smoothing)
    return PreferenceLoss(
        losses.mean(), pref.beta * chosen_average.detach(), pref.beta * rejected_average.detach()
    )


register_loss(
    LossSpec(
        "simpo",
        simpo,
        reference=False,
        paired=True,
        reads=("gamma", "label_smoothing", "sft_weight"),
        trl=TrlTwin(
            "experimental.cpo.CPOTrainer",
            {"loss_type": "simpo", "cpo_alpha": 0.0},
            {"gamma": "simpo_gamma"},
            sft=lambda w: {"cpo_alpha": w},
        ),
    )
)
