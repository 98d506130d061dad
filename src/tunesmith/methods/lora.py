"""LoRA and DoRA adapters through peft."""

from __future__ import annotations

from tunesmith.config import MethodConfig
from tunesmith.methods import Method, register


def peft_config(cfg: MethodConfig, use_dora: bool = False):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        use_dora=use_dora,
    )


def apply_lora(model, cfg: MethodConfig):
    from peft import get_peft_model

    return get_peft_model(model, peft_config(cfg))


def apply_dora(model, cfg: MethodConfig):
    from peft import get_peft_model

    return get_peft_model(model, peft_config(cfg, use_dora=True))


register(Method("lora", apply_lora, is_adapter=True))
register(Method("dora", apply_dora, is_adapter=True))
