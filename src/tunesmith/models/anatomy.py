"""Where things are inside a model: its shape, its stack of blocks, its pretrained body and the body's layers, its
task head, its forward's inputs.

Methods (which weights train, where adapters go) and tasks (what the head predicts) both ask these questions; the
answers depend only on how transformers lays out a model, so they live here, below both. A new kind of model is a
row of SHAPES, not a branch in a method.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Shape:
    """What a method needs to know about one shape of model to place adapters in it and save them."""

    name: str
    matches: Callable[[torch.nn.Module], bool]
    # peft's TaskType for its model wrapper (CAUSAL_LM, SEQ_2_SEQ_LM), or None for the plain PeftModel
    peft_task_type: str | None
    # True: the head is new (sized for the task's labels): it trains in full and is saved beside the adapters
    # (peft's modules_to_save), and "all-linear" adapters go on the body's layers only (body_layers)
    new_head: bool
    note: str = ""


# First match wins; the last row takes every model the others do not.
SHAPES = (
    Shape("causal LM", is_causal_lm, "CAUSAL_LM", new_head=False, note="the LM head is pretrained and stays"),
    Shape(
        "seq2seq LM",
        is_seq2seq_lm,
        "SEQ_2_SEQ_LM",
        new_head=False,
        note="adapters in the encoder and the decoder (self- and cross-attention, MLP); the LM head stays",
    ),
    Shape(
        "speech seq2seq",
        is_speech_seq2seq,
        None,
        new_head=False,
        note="Whisper: encoder and decoder linears; the tied vocabulary projection stays. No task type: peft's "
        "SEQ_2_SEQ_LM wrapper passes input_ids, which a speech model's forward does not take",
    ),
    Shape(  # every other model: a pretrained body under a task head (classifiers of text, images, audio, tokens)
        "body and head",
        lambda model: True,
        None,
        new_head=True,
        note="a classifier: adapters on the pretrained body only; the new head trains in full beside them",
    ),
)


def model_shape(model) -> Shape:
    """The model's row of SHAPES."""
    return next(shape for shape in SHAPES if shape.matches(model))


def body_layers(model) -> list[str]:
    """Full names of the pretrained body's linear layers (its convolutions where it has none, as in ResNet)."""
    base = base_module(model)
    prefix = next(name for name, child in model.named_children() if child is base)
    for kinds in ((torch.nn.Linear,), (torch.nn.Conv2d,)):
        names = [f"{prefix}.{name}" for name, module in base.named_modules() if isinstance(module, kinds)]
        if names:
            return names
    raise TunesmithError(
        "method.name: lora found no linear or convolution layer to adapt; use full or last_n"
    )
