"""DPO (Rafailov et al. 2023): the sigmoid loss on the policy's and the reference's summed log-probabilities."""

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


def dpo(pairs: Pairs, pref: LossSettings) -> PreferenceLoss:
    """label_smoothing > 0 is conservative DPO (the chance a preference label is flipped), the form TRL's sigmoid
    loss had before 1.0 and LLaMA-Factory's dpo_label_smoothing has; at 0 it is TRL 1.16's loss_type="sigmoid"."""
    chosen_logratios = pairs.chosen - pairs.ref_chosen
    rejected_logratios = pairs.rejected - pairs.ref_rejected
    logits = pref.beta * (chosen_logratios - rejected_logratios)
    losses = sigmoid_loss(logits, pref.label_smoothing)
    return PreferenceLoss(
        losses.mean(), pref.beta * chosen_logratios.detach(), pref.beta * rejected_logratios.detach()
    )


register_loss(
    LossSpec(
        "dpo",
        dpo,
        reference=True,
        paired=True,
        reads=("label_smoothing", "sft_weight"),
        trl=TrlTwin(
            "DPOTrainer",
            {"loss_type": ["sigmoid"]},
            sft=lambda w: {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, w]},
        ),
    )
)
