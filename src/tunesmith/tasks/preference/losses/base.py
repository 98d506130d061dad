"""What every preference loss is built from: the batch it reads (Pairs, Answers), what it returns (PreferenceLoss),
its registration (LossSpec, TrlTwin, register_loss, get_loss) and the terms several losses share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from tunesmith.registry import lookup


class LossSettings(Protocol):
    """What a loss reads of the `preference:` section (tasks/preference/settings.PreferenceConfig)."""

    beta: float
    label_smoothing: float
    gamma: float
    desirable_weight: float
    undesirable_weight: float


@dataclass
class PreferenceLoss:
    """The batch loss and, per answer, the implicit reward the loss pushes apart (detached, for metrics)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor  # one per chosen (unpaired: desirable) answer
    rejected_rewards: torch.Tensor  # one per rejected (unpaired: undesirable) answer
    kl: torch.Tensor | None = None  # KTO's estimate of KL(policy || reference)

    @property
    def margin(self) -> torch.Tensor:
        """Mean chosen reward minus mean rejected reward (for pairs, the mean of the per-pair margins)."""
        return self.chosen_rewards.mean() - self.rejected_rewards.mean()

    @property
    def accuracy(self) -> torch.Tensor:
        """Share of pairs whose chosen answer out-scores the rejected one (pairs only)."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean()


@dataclass
class Pairs:
    """What a paired loss reads of a batch: per pair, each answer's summed log-probability and its length."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    ref_chosen: torch.Tensor | None = None  # the reference's, when the loss needs a reference
    ref_rejected: torch.Tensor | None = None
    chosen_nll: torch.Tensor | None = None  # mean token NLL of the chosen rows, prompt included (prompt_nll)


@dataclass
class Answers:
    """What an unpaired loss reads: per answer, its summed log-probability and its label, and the same prompts
    with another row's answer (`kl_`: the reference point of KTO's KL estimate)."""

    logps: torch.Tensor
    desirable: torch.Tensor  # bool, one per answer
    kl_logps: torch.Tensor
    ref_logps: torch.Tensor | None = None
    ref_kl_logps: torch.Tensor | None = None


@dataclass(frozen=True)
class TrlTwin:
    """The TRL 1.16 trainer a loss equals (tests/test_preference.py builds it and compares on one batch).

    trainer: the class under `trl` (`DPOTrainer`, `experimental.cpo.CPOTrainer`; its `...Config` beside it).
    args: that config's arguments for this loss (beta is always passed); settings: our `preference.*` setting ->
    that config's argument, for the settings the comparison sets; sft: that config's arguments for sft_weight w.
    """

    trainer: str
    args: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    sft: Callable[[float], dict[str, Any]] | None = None


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function and what the trainer, the data and the config must know about it.

    reads: the `preference.*` settings it reads (beta and the field names aside). "sft_weight" among them means
    the trainer adds sft_weight x the chosen answers' NLL per token to it (RPO); setting sft_weight for a loss that
    does not read it is a config error. trl or no_trl: its TRL counterpart, or why it has none (one is required:
    tests/test_preference.py fails for a loss with neither).
    """

    name: str
    compute: Callable[..., PreferenceLoss]  # (Pairs or Answers, PreferenceConfig) -> PreferenceLoss
    reference: bool  # needs a reference model's log-probabilities
    paired: bool  # chosen/rejected pairs; False: unpaired answers labelled desirable or not
    reads: tuple[str, ...] = ()
    prompt_nll: bool = False  # reads the chosen rows' mean token NLL over prompt and answer (ORPO)
    trl: TrlTwin | None = None
    no_trl: str | None = None

    @property
    def splits_backward(self) -> bool:
        """preference.split_backward applies: the loss is a function of each row's summed log-probability and
        length alone, so its gradient can be taken chunk by chunk (tasks/preference/trainer.split_backward)."""
        return self.paired and not self.prompt_nll


LOSSES: dict[str, LossSpec] = {}


def register_loss(spec: LossSpec) -> LossSpec:
    """Add a loss under spec.name; one line in the loss's own module."""
    LOSSES[spec.name] = spec
    return spec


def get_loss(name: str, key: str | None = "preference.loss") -> LossSpec:
    """The registered loss; an unknown name gets a did-you-mean (a ValueError inside config validation)."""
    return lookup(LOSSES, name, "preference loss", key)


def names(where: Callable[[LossSpec], bool] = lambda spec: True) -> list[str]:
    """The registered losses for which `where` holds, in registration order."""
    return [name for name, spec in LOSSES.items() if where(spec)]


def sigmoid_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-log sigmoid(logits) per pair; with label_smoothing s, the expectation when a preference is flipped with
    probability s (conservative DPO)."""
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def with_sft(result: PreferenceLoss, chosen_logps, chosen_lengths, weight: float) -> PreferenceLoss:
    """Add `weight` x the chosen answers' NLL per token over the batch (every chosen answer token weighs alike),
    as TRL 1.16's loss_type "sft" term with loss_weights [1, weight] (RPO, Pang et al. 2024)."""
    if not weight:
        return result
    nll = -chosen_logps.sum() / chosen_lengths.sum().clamp(min=1)
    return replace(result, loss=result.loss + weight * nll)
