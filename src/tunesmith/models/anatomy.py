"""Where things are inside a model: its stack of blocks, its pretrained body, its task head, its forward's inputs.

Methods (which weights train) and tasks (what the head predicts) both ask these questions; the answers depend only
on how transformers lays out a model, so they live here, below both.
"""

from __future__ import annotations

import inspect

import torch

from tunesmith.errors import TunesmithError


def size(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The model's stack of blocks: the ModuleList holding the most weights (model.layers, encoder.stages, ...)."""
    lists = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList)]
    if not lists:
        raise TunesmithError(
            "method.name: this strategy needs a model with a stack of blocks; use lora or full"
        )
    return max(lists, key=lambda blocks: (size(blocks), len(blocks)))


def base_module(model) -> torch.nn.Module:
    """The pretrained body: model.<base_model_prefix>, or else the child holding the most weights."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(base, torch.nn.Module) and base is not model:
        return base
    return max(model.children(), key=size)


def head_names(model) -> list[str]:
    """Top-level modules outside the pretrained body: the task head (classifier, projector, lm_head, ...)."""
    if is_seq2seq_lm(
        model
    ):  # T5 has no single body child (shared, encoder, decoder): its head is the LM head
        return ["lm_head"]
    base = base_module(model)
    return [name for name, child in model.named_children() if child is not base and size(child)]


def forward_inputs(model) -> set[str]:
    """The keyword arguments the model's forward accepts (Whisper's encoder takes no attention_mask)."""
    return set(inspect.signature(model.forward).parameters)


def is_causal_lm(model) -> bool:
    return model.__class__.__name__.endswith("ForCausalLM")


def is_seq2seq_lm(model) -> bool:
    """A text-to-text encoder-decoder (T5, BART): transformers' AutoModelForSeq2SeqLM architectures."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return model.__class__.__name__ in set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.values())


def is_speech_seq2seq(model) -> bool:
    """An audio-to-text encoder-decoder (Whisper, Speech2Text): transformers' AutoModelForSpeechSeq2Seq architectures."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    return model.__class__.__name__ in set(MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.values())
