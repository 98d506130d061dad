"""QLoRA: LoRA adapters (method.lora settings) on a 4-bit (NF4) base loaded through bitsandbytes; a run reloads
its base 4-bit too (Method.reload asks quantization_config)."""

from __future__ import annotations

import torch

from tunesmith.config import MethodConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods import Method, register
from tunesmith.methods.lora import RATES as LORA_RATES
from tunesmith.methods.lora import LoraSettings, apply_lora


def quantization_config(cfg: MethodConfig):
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native library
        raise TunesmithError(
            f"method.name: qlora needs bitsandbytes, which cannot be loaded here ({type(exc).__name__}: {exc}); "
            "install it with `pip install tunesmith[quantization]`, or use method.name: lora"
        ) from None
    from transformers import BitsAndBytesConfig

    if torch.cuda.is_available():
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        compute = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX, as training.hardware.cpu_has_fast_bf16 asks (a floor above methods): elsewhere a bf16
    matmul runs ~20-100x slower than float32 (docs/speed.md), and a 4-bit layer computes in this dtype."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return bool(set(flags.split(":", 1)[-1].split()) & {"avx512_bf16", "amx_bf16"})


def apply_qlora(model, cfg: MethodConfig):
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return apply_lora(model, cfg)


register(
    Method(
        "qlora",
        apply_qlora,
        is_adapter=True,
        summary="LoRA over a 4-bit (NF4) base loaded through bitsandbytes",
        quantization_config=quantization_config,
        needs=frozenset({"4-bit base"}),
        learning_rates=LORA_RATES,
        section="lora",
        settings=LoraSettings,
    )
)
