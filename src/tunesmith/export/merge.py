"""Fold a LoRA/DoRA adapter into its base weights, refusing when the merged model's logits moved; an 8-bit base
(model.quantization: int8) is dequantized to float32 first, and the merge is checked against the adapter over it."""

from __future__ import annotations

import torch

from tunesmith.data.templates import Renderer
from tunesmith.errors import TunesmithError
from tunesmith.models.quantized import dequantized_adapter, is_8bit

PROBE = (("user", "Write a headline about the weather."),)


def merge_adapter(model, renderer: Renderer) -> tuple[torch.nn.Module, dict]:
    """The adapter merged into the base (a peft model in, a plain transformers model out) and the parity record."""
    if not hasattr(model, "merge_and_unload"):
        raise TunesmithError("merge: the run trained full weights; there is no adapter to merge")
    probe = torch.tensor([renderer.encode_prompt(PROBE)])
    int8 = {}
    with torch.no_grad():
        adapter_logits = model(input_ids=probe).logits
        if is_8bit(model):
            int8_logits = adapter_logits  # LLM.int8 inference: activations rounded to int8 as well
            model = dequantized_adapter(model)
            adapter_logits = model(input_ids=probe).logits
            int8 = int8_inference_gap(int8_logits, adapter_logits)
        merged = model.merge_and_unload()
        merged_logits = merged(input_ids=probe).logits
    difference = (adapter_logits - merged_logits).abs().max().item()
    tolerance = 1e-4 if merged_logits.dtype == torch.float32 else 5e-2
    if difference > tolerance:
        raise TunesmithError(
            f"merge parity check failed: logits differ by {difference:.2e} (> {tolerance}); the adapter was not written"
        )
    return merged, {"max_abs_logit_difference": difference, "tolerance": tolerance, **int8}


def int8_inference_gap(int8_logits: torch.Tensor, float_logits: torch.Tensor) -> dict:
    """How far LLM.int8 inference (the adapter over the 8-bit base, activations rounded to int8 per row) is from the
    same adapter over the dequantized weights, which the merge is checked against: recorded, not a gate, since the
    gap is bitsandbytes' activation rounding, present before any merge (docs/speed.md measures it on SmolLM2)."""
    return {
        "int8_inference": {
            "max_abs_logit_difference": (int8_logits - float_logits).abs().max().item(),
            "top1_agreement": (int8_logits.argmax(-1) == float_logits.argmax(-1)).float().mean().item(),
        }
    }
