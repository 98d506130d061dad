"""An 8-bit base (model.quantization: int8, bitsandbytes LLM.int8): how it loads, what it saves and costs, and the
adapter over its dequantized weights that a merge folds (qlora's 4-bit base is the method's own: methods/qlora.py)."""

from __future__ import annotations

import torch

from tunesmith.errors import TunesmithError


def int8_config():
    """transformers' BitsAndBytesConfig for LLM.int8 (the guide's recipe: load_in_8bit=True, threshold 6.0)."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native library
        raise TunesmithError(
            f"model.quantization: int8 needs bitsandbytes, which cannot be loaded here ({type(exc).__name__}: "
            f"{exc}); install it with `pip install tunesmith[quantization]`, or remove model.quantization"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def int8_weights(model) -> int:
    """How many of the model's weights are stored in 8 bits (bitsandbytes Int8Params)."""
    return sum(p.numel() for p in model.parameters() if type(p).__name__ == "Int8Params")


def is_8bit(model) -> bool:
    return int8_weights(model) > 0


def int8_tradeoff(model) -> str | None:
    """What an 8-bit base saves and costs, said when a run starts on one; None when no weight is 8-bit."""
    count = int8_weights(model)
    if not count:
        return None
    line = (
        f"model.quantization: int8: {count:,} base weights stored in 8 bits ({count / 2**20:,.1f} MB instead of "
        f"{4 * count / 2**20:,.1f} MB in float32; embeddings, norms and the LM head stay float32)"
    )
    if not torch.cuda.is_available():
        # bitsandbytes' CPU backend trains an 8-bit layer by dequantizing its weights at every step, and its int8
        # matmul (inference) uses torch._int_mm only on AVX-512 CPUs; elsewhere it multiplies int8 in float32.
        line += (
            "; on a CPU each training step dequantizes them again (a float32 step's work and more) and evaluation "
            "rounds activations to int8 too, so it is no faster than lora on a float32 base and scores a little "
            "worse, and the peak memory falls only where the base's weights are most of it (docs/speed.md)"
        )
    return line


def dequantized_adapter(model):
    """`model`'s active adapter (a peft model over an 8-bit base) over that base dequantized to float32, ready for
    peft's float merge. On a CPU bitsandbytes trains an 8-bit layer on exactly these dequantized weights, so this
    is the function the adapter learned; peft's own 8-bit merge would round the merged weights to int8 again and
    lose most of an update smaller than one rounding step."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    name = model.active_adapter
    config = model.peft_config[name]
    adapter = get_peft_model_state_dict(model, adapter_name=name)
    base = model.unload()  # the base without its adapter layers, still 8-bit
    base = base.dequantize(dtype=torch.float32)  # transformers' own: every Linear8bitLt to a float nn.Linear
    plain = get_peft_model(base, config, adapter_name=name)
    set_peft_model_state_dict(plain, adapter, adapter_name=name)
    return plain.eval()
