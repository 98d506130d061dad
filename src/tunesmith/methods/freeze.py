"""Partial retraining: the head only, or the last N blocks plus everything after them (final norm, pooler, head)."""

from __future__ import annotations

import torch

from tunesmith.config import MethodConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods import Method, register


def _size(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The model's stack of blocks: the ModuleList holding the most weights (model.layers, encoder.stages, ...)."""
    lists = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList)]
    if not lists:
        raise TunesmithError(
            "method.name: this strategy needs a model with a stack of blocks; use lora or full"
        )
    return max(lists, key=lambda blocks: (_size(blocks), len(blocks)))


def base_module(model) -> torch.nn.Module:
    """The pretrained body: model.<base_model_prefix>, or else the child holding the most weights."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(base, torch.nn.Module) and base is not model:
        return base
    return max(model.children(), key=_size)


def head_names(model) -> list[str]:
    """Top-level modules outside the pretrained body: the task head (classifier, projector, lm_head, ...)."""
    base = base_module(model)
    return [name for name, child in model.named_children() if child is not base and _size(child)]


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
    return train_only_last(model, cfg.freeze.last_n, cfg.freeze.train_embeddings)


def apply_head(model, cfg: MethodConfig):
    return train_only_head(model)


register(Method("last_n", apply_last_n, is_adapter=False))
register(Method("freeze", apply_last_n, is_adapter=False))  # the earlier name of last_n
register(Method("head", apply_head, is_adapter=False))
