"""LoRA and DoRA adapters through peft, and their settings (method.lora, shared with qlora)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.config import MethodConfig, Section
from tunesmith.methods import Method, register
from tunesmith.models.anatomy import body_layers, head_names, model_shape
from tunesmith.models.quantized import is_8bit


class LoraSettings(Section):
    """method.lora: the adapters' rank, scale, dropout and the layers they go on (lora, dora, qlora)."""

    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"

    @property
    def scale(self) -> float:
        """alpha / r: the factor the adapter's update is multiplied by (default learning rates allow for it)."""
        return self.alpha / self.r


def peft_config(model, settings: LoraSettings, use_dora: bool = False):
    """peft's LoraConfig for this model: where the adapters go and what is saved beside them is the model's
    anatomy's answer for its shape (models.anatomy.model_shape), not decided here."""
    from peft import LoraConfig, TaskType

    shape = model_shape(model)
    targets, beside = settings.target_modules, None
    if shape.new_head:  # adapters on the pretrained body only; the new head trains in full, saved with them
        targets = body_layers(model) if targets == "all-linear" else targets
        beside = head_names(model)
    return LoraConfig(
        task_type=TaskType[shape.peft_task_type] if shape.peft_task_type else None,
        target_modules=targets,
        modules_to_save=beside,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_dora=use_dora,
    )


def ready_for_adapters(model):
    """An 8-bit base (model.quantization: int8) frozen and its float layers kept float32, as peft asks."""
    if not is_8bit(model):
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def apply_lora(model, cfg: MethodConfig):
    from peft import get_peft_model

    model = ready_for_adapters(model)
    return get_peft_model(model, peft_config(model, cfg.section("lora")))


def apply_dora(model, cfg: MethodConfig):
    from peft import get_peft_model

    model = ready_for_adapters(model)
    return get_peft_model(model, peft_config(model, cfg.section("lora"), use_dora=True))


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
        section="lora",
        settings=LoraSettings,
        takes_8bit_base=True,  # not dora: its second step fails in bitsandbytes' CPU 8-bit matmul (peft 0.21)
    )
)
register(
    Method(
        "dora",
        apply_dora,
        is_adapter=True,
        summary="weight-decomposed low-rank adapters (peft DoRA)",
        learning_rates=RATES,
        section="lora",
        settings=LoraSettings,
    )
)
