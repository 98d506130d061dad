"""The `preference:` config section: the loss (a registered name), its strength, and the data's field names."""

from __future__ import annotations

from pydantic import Field, field_validator

from tunesmith.config import Section
from tunesmith.tasks.preference.losses import LOSSES, get_loss

SECTION = "preference"  # the top-level config key


class PreferenceConfig(Section):
    """task: preference. The objective, its strength, and the names of the data's fields."""

    loss: str = Field(
        "dpo", description=f"a registered preference loss (tasks/preference/losses/): {', '.join(LOSSES)}"
    )
    beta: float = Field(0.1, gt=0, description="how far from the reference the policy may move (ipo: tau)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="dpo, simpo: chance a preference is flipped"
    )
    gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin")
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="dpo, ipo, simpo: add this times the chosen answers' mean token NLL (RPO; TRL's DPO "
        "loss_type [sigmoid, sft] with loss_weights [1, w], CPO's cpo_alpha for simpo), so the chosen answers "
        "get likelier, not only the rejected ones less likely",
    )
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of desirable answers' loss")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of undesirable answers' loss")
    split_backward: bool = Field(
        False,
        description="dpo, ipo, simpo: score every answer without gradients first, then backpropagate in chunks "
        "of rows no larger than the chosen half (the exact same gradient): a step's peak activations are an SFT "
        "step's on the chosen answers, for one more forward pass; one process only",
    )
    precompute_reference: bool = Field(
        False, description="reference log-probabilities computed once before training and cached"
    )
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    completion_field: str = Field("completion", description="kto's unpaired rows: the answer")
    label_field: str = Field("label", description="kto's unpaired rows: true (desirable) or false")

    @field_validator("loss")
    @classmethod
    def _registered(cls, value: str) -> str:
        get_loss(value, key=None)  # unknown: one line with a did-you-mean
        return value
