"""KTO (Ethayarajh et al. 2024, eq. 7) on unpaired answers labelled desirable or not."""

from __future__ import annotations

import torch

from tunesmith.tasks.preference.losses.base import (
    Answers,
    LossSettings,
    LossSpec,
    PreferenceLoss,
    TrlTwin,
    register_loss,
)


def kto(answers: Answers, pref: LossSettings) -> PreferenceLoss:
    """The reference point is KL(policy || reference) estimated, as TRL does, from mismatched pairs (each prompt
    with another row's answer: `kl_logps`), averaged over the batch, clamped at 0 and not differentiated."""
    beta = pref.beta
    kl = (answers.kl_logps - answers.ref_kl_logps).mean().detach().clamp(min=0)
    logratios = answers.logps - answers.ref_logps
    desirable = answers.desirable
    chosen_logratios, rejected_logratios = logratios[desirable], logratios[~desirable]
    chosen_losses = 1 - torch.sigmoid(beta * (chosen_logratios - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - rejected_logratios))
    losses = torch.cat((pref.desirable_weight * chosen_losses, pref.undesirable_weight * rejected_losses))
    return PreferenceLoss(
        losses.nanmean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach(), kl
    )


register_loss(
    LossSpec(
        "kto",
        kto,
        reference=True,
        paired=False,
        reads=("desirable_weight", "undesirable_weight"),
        trl=TrlTwin(
            "KTOTrainer",
            settings={"desirable_weight": "desirable_weight", "undesirable_weight": "undesirable_weight"},
        ),
    )
)
