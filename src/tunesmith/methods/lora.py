"""LoRA and DoRA adapters through peft."""

from __future__ import annotations

import torch

from tunesmith.config import MethodConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods import Method, register
from tunesmith.models.anatomy import base_module, head_names, is_causal_lm, is_seq2seq_lm, is_speech_seq2seq


def body_targets(model) -> list[str]:
    """Full names of the body's linear layers (its convolutions where it has none, as in ResNet)."""
    base = base_module(model)
    prefix = next(name for name, child in model.named_children() if child is base)
    for kinds in ((torch.nn.Linear,), (torch.nn.Conv2d,)):
        names = [f"{prefix}.{name}" for name, module in base.named_modules() if isinstance(module, kinds)]
        if names:
            return names
    raise TunesmithError(
        "method.name: lora found no linear or convolution layer to adapt; use full or last_n"
    )


def peft_config(model, cfg: MethodConfig, use_dora: bool = False):
    from peft import LoraConfig, TaskType

    common = {
        "r": cfg.lora.r,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout,
        "use_dora": use_dora,
    }
    if is_causal_lm(model):
        return LoraConfig(task_type=TaskType.CAUSAL_LM, target_modules=cfg.lora.target_modules, **common)
    if is_seq2seq_lm(model):  # adapters in the encoder and the decoder (self- and cross-attention, MLP)
        return LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, target_modules=cfg.lora.target_modules, **common)
    if is_speech_seq2seq(
        model
    ):  # Whisper: encoder and decoder linears; the tied vocabulary projection stays.
        # No task type: peft's SEQ_2_SEQ_LM wrapper passes input_ids, which a speech model's forward does not take.
        return LoraConfig(target_modules=cfg.lora.target_modules, **common)
    # A classifier: adapters on the pretrained body only; the new head trains in full and is saved with them.
    targets = body_targets(model) if cfg.lora.target_modules == "all-linear" else cfg.lora.target_modules
    return LoraConfig(target_modules=targets, modules_to_save=head_names(model), **common)


def apply_lora(model, cfg: MethodConfig):
    from peft import get_peft_model

    return get_peft_model(model, peft_config(model, cfg))


def apply_dora(model, cfg: MethodConfig):
    from peft import get_peft_model

    return get_peft_model(model, peft_config(model, cfg, use_dora=True))


# Adapters start at zero (B = 0) and few weights move: LoRA needs a step 10-20x that of full fine-tuning;
# a new classifier head trains alongside. Rates are for alpha / r = 2 and rescaled for other settings.
RATES = {"classifier": 1e-3, "generator": 2e-4}
register(
    Method(
        "lora",
        apply_lora,
        is_adapter=True,
        summary="low-rank adapters (peft LoRA) on the body",
        learning_rates=RATES,
    )
)
register(
    Method(
        "dora",
        apply_dora,
        is_adapter=True,
        summary="weight-decomposed low-rank adapters (peft DoRA)",
        learning_rates=RATES,
    )
)
