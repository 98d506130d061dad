"""Preference losses (DPO, IPO, ORPO, SimPO, KTO) as plain functions of per-sequence log-probabilities.

Each follows TRL 1.16's trainer code term for term (dpo_trainer.py, experimental/orpo, experimental/cpo with
loss_type="simpo", kto_trainer.py), so a run here and a run there optimise the same objective;
tests/test_preference.py checks losses, rewards and gradients against TRL's trainers on one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

LOSSES = ("dpo", "ipo", "orpo", "simpo", "kto")
NEEDS_REFERENCE = {"dpo": True, "ipo": True, "orpo": False, "simpo": False, "kto": True}


@dataclass
class PreferenceLoss:
    """The batch loss and, per answer, the implicit reward the loss pushes apart (detached, for metrics)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor  # one per chosen (KTO: desirable) answer
    rejected_rewards: torch.Tensor  # one per rejected (KTO: undesirable) answer
    kl: torch.Tensor | None = None  # KTO's estimate of KL(policy || reference)

    @property
    def margin(self) -> torch.Tensor:
        """Mean chosen reward minus mean rejected reward (for pairs, the mean of the per-pair margins)."""
        return self.chosen_rewards.mean() - self.rejected_rewards.mean()

    @property
    def accuracy(self) -> torch.Tensor:
        """Share of pairs whose chosen answer out-scores the rejected one (pairs only: KTO has none)."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean()


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """DPO's sigmoid loss on summed log-probabilities (Rafailov et al. 2023).

    label_smoothing > 0 is conservative DPO (the chance a preference label is flipped), the form TRL's sigmoid
    loss had before 1.0 and LLaMA-Factory's dpo_label_smoothing has; at 0 it is TRL 1.16's loss_type="sigmoid".
    """
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return PreferenceLoss(losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
) -> PreferenceLoss:
    """IPO (Azar et al. 2023, eq. 17) with beta as tau; log-ratios per answer token, as TRL (confirmed with the
    authors) so that the squared loss does not grow with answer length."""
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    delta = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(
        min=1
    )
    losses = (delta - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def with_sft(result: PreferenceLoss, chosen_logps, chosen_lengths, weight: float) -> PreferenceLoss:
    """Add `weight` x the chosen answers' NLL per token over the batch (every chosen answer token weighs alike),
    as TRL 1.16's loss_type "sft" term with loss_weights [1, weight] (RPO, Pang et al. 2024)."""
    if not weight:
        return result
    nll = -chosen_logps.sum() / chosen_lengths.sum().clamp(min=1)
    return replace(result, loss=result.loss + weight * nll)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, switching form at -ln 2 to avoid cancellation."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    chosen_nll: torch.Tensor,
    beta: float,
) -> PreferenceLoss:
    """ORPO (Hong et al. 2024): the chosen answers' NLL minus beta * log sigmoid(log odds ratio), no reference.

    The odds use per-token average log-probabilities; `chosen_nll` is the mean token NLL of the chosen rows
    (TRL takes it over prompt and answer; the caller decides, see preference_trainer.sequence_logps).
    """
    chosen_average = (chosen_logps / chosen_lengths.clamp(min=1)).float()
    rejected_average = (rejected_logps / rejected_lengths.clamp(min=1)).float()
    log_odds = (chosen_average - rejected_average) - (_log1mexp(chosen_average) - _log1mexp(rejected_average))
    odds_term = beta * F.logsigmoid(log_odds)
    return PreferenceLoss(
        chosen_nll - odds_term.mean(), beta * chosen_average.detach(), beta * rejected_average.detach()
    )


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """SimPO (Meng et al. 2024): length-normalised log-probabilities as rewards, a target margin gamma, no
    reference; TRL's CPOTrainer with loss_type="simpo" and cpo_alpha=0."""
    chosen_average = chosen_logps / chosen_lengths.clamp(min=1)
    rejected_average = rejected_logps / rejected_lengths.clamp(min=1)
    logits = beta * (chosen_average - rejected_average - gamma / beta)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return PreferenceLoss(losses.mean(), beta * chosen_average.detach(), beta * rejected_average.detach())


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PreferenceLoss:
    """KTO (Ethayarajh et al. 2024, eq. 7) on unpaired answers labelled desirable or not.

    The reference point is KL(policy || reference) estimated, as TRL does, from mismatched pairs (each prompt
    with another row's answer: `kl_logps`), averaged over the batch, clamped at 0 and not differentiated.
    """
    kl = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    logratios = logps - ref_logps
    chosen_logratios, rejected_logratios = logratios[desirable], logratios[~desirable]
    chosen_losses = 1 - torch.sigmoid(beta * (chosen_logratios - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - rejected_logratios))
    losses = torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses))
    return PreferenceLoss(
        losses.nanmean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach(), kl
    )
