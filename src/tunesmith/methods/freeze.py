"""Partial freezing: train only the last N transformer blocks, the final norm and the head."""

from __future__ import annotations

import torch

from tunesmith.config import MethodConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods import Method, register


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The model's stack of blocks: its largest ModuleList (model.layers, transformer.h, ...)."""
    lists = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList)]
    if not lists:
        raise TunesmithError(
            "method.name: freeze needs a model with a stack of transformer blocks; use lora or full"
        )
    return max(lists, key=len)


def apply_freeze(model, cfg: MethodConfig):
    blocks = transformer_blocks(model)
    if cfg.freeze.last_n > len(blocks):
        raise TunesmithError(
            f"method.freeze.last_n: {cfg.freeze.last_n} is more than the model's {len(blocks)} blocks"
        )
    model.requires_grad_(False)
    for block in list(blocks)[len(blocks) - cfg.freeze.last_n :]:
        block.requires_grad_(True)
    model.get_output_embeddings().requires_grad_(True)  # tied to the input embeddings in many small models
    base = getattr(model, model.base_model_prefix, model)
    final_norm = getattr(base, "norm", None) or getattr(base, "ln_f", None)
    if final_norm is not None:
        final_norm.requires_grad_(True)
    if cfg.freeze.train_embeddings:
        model.get_input_embeddings().requires_grad_(True)
    return model


register(Method("freeze", apply_freeze, is_adapter=False))
