"""Fold a LoRA/DoRA adapter into its base weights, refusing when the merged model's logits moved."""

from __future__ import annotations

import torch

from tunesmith.data.templates import Renderer
from tunesmith.errors import TunesmithError

PROBE = (("user", "Write a headline about the weather."),)


def merge_adapter(model, renderer: Renderer) -> tuple[torch.nn.Module, dict]:
    """The adapter merged into the base (a peft model in, a plain transformers model out) and the parity record."""
    if not hasattr(model, "merge_and_unload"):
        raise TunesmithError("merge: the run trained full weights; there is no adapter to merge")
    probe = torch.tensor([renderer.encode_prompt(PROBE)])
    with torch.no_grad():
        adapter_logits = model(input_ids=probe).logits
        merged = model.merge_and_unload()
        merged_logits = merged(input_ids=probe).logits
    difference = (adapter_logits - merged_logits).abs().max().item()
    tolerance = 1e-4 if merged_logits.dtype == torch.float32 else 5e-2
    if difference > tolerance:
        raise TunesmithError(
            f"merge parity check failed: logits differ by {difference:.2e} (> {tolerance}); the adapter was not written"
        )
    return merged, {"max_abs_logit_difference": difference, "tolerance": tolerance}
