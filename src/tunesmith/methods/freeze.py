"""Partial retraining: the head only, or the last N blocks plus everything after them (final norm, pooler, head),
and last_n's settings (method.freeze)."""

from __future__ import annotations

from pydantic import Field

from tunesmith.config import MethodConfig, Section
from tunesmith.errors import TunesmithError
from tunesmith.methods import Method, register
from tunesmith.models.anatomy import head_names, transformer_blocks


class FreezeSettings(Section):
    """method.freeze: how much of the model last_n trains (method.last_n is a shorter spelling of last_n)."""

    last_n: int = Field(2, ge=0, description="train the last N blocks plus the head")
    train_embeddings: bool = False


def train_only_last(model, last_n: int, train_embeddings: bool = False):
    """Freeze everything, then unfreeze the last N blocks, every weight registered after them, and the head."""
    train_only_head(model)
    blocks = transformer_blocks(model)
    if last_n > len(blocks):
        raise TunesmithError(f"method.last_n: {last_n} is more than the model's {len(blocks)} blocks")
    for block in list(blocks)[len(blocks) - last_n :]:
        block.requires_grad_(True)
    in_blocks = {id(parameter) for parameter in blocks.parameters()}
    names = [name for name, parameter in model.named_parameters() if id(parameter) in in_blocks]
    after_blocks = False
    for name, parameter in model.named_parameters():
        if name == names[-1]:
            after_blocks = True
        elif after_blocks and id(parameter) not in in_blocks:
            parameter.requires_grad_(True)  # final norm, pooler, head: they read the last block's output
    if train_embeddings:
        model.get_input_embeddings().requires_grad_(True)
    return model


def train_only_head(model):
    """Transfer learning: the pretrained body is frozen, the task head trains."""
    model.requires_grad_(False)
    for name in head_names(model):
        getattr(model, name).requires_grad_(True)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        output.requires_grad_(True)  # tied to the input embeddings in many small language models
    return model


def apply_last_n(model, cfg: MethodConfig):
    settings: FreezeSettings = cfg.section("freeze")
    return train_only_last(model, settings.last_n, settings.train_embeddings)


def apply_head(model, cfg: MethodConfig):
    return train_only_head(model)


LAST_N = "the last N blocks (method.last_n) plus everything after them train"
# Fewer weights move than in full fine-tuning, and the new head starts from random: a larger step.
LAST_N_RATES = {"classifier": 1e-4, "generator": 5e-5}
# A linear head alone on a frozen body is a convex problem: it takes a large step (or is solved, see the
# classification recipe).
HEAD_RATES = {"classifier": 1e-3, "generator": 5e-5}
SETTINGS = {"learning_rates": LAST_N_RATES, "section": "freeze", "settings": FreezeSettings}
register(Method("last_n", apply_last_n, is_adapter=False, summary=LAST_N, **SETTINGS))
register(
    Method(
        "freeze", apply_last_n, is_adapter=False, summary="the earlier name of last_n: " + LAST_N, **SETTINGS
    )
)
register(
    Method(
        "head",
        apply_head,
        is_adapter=False,
        summary="transfer learning: only the task head trains",
        learning_rates=HEAD_RATES,
    )
)
