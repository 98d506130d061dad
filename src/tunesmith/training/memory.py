"""Gradient checkpointing chosen from memory: estimate a step's activations, compare with what the device has free.

The estimate is Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models":
s*b*h*(34 + 5*a*s/h) bytes per layer in 16-bit, scaled to the training precision, plus the logits and their
gradient. It errs high (it ignores the sparse LM head and fused attention), which is the safe side.
"""

from __future__ import annotations

import torch


def activation_bytes(model_config, batch: int, sequence: int, precision: str) -> int | None:
    """Estimated activation memory of one forward+backward step, or None for an architecture it can't read."""
    text_config = getattr(model_config, "get_text_config", lambda: model_config)()
    try:
        hidden = int(text_config.hidden_size)
        layers = int(text_config.num_hidden_layers)
        heads = int(text_config.num_attention_heads)
    except (AttributeError, TypeError):
        return None
    scale = 2.0 if precision == "fp32" else 1.0  # the formula counts 16-bit values
    per_layer = sequence * batch * hidden * (34 + 5 * heads * sequence / hidden) * scale
    vocabulary = int(getattr(text_config, "vocab_size", 0) or 0)
    logits = 2 * batch * sequence * vocabulary * 4  # fp32 logits and their gradient
    return int(layers * per_layer + logits)


def bytes_still_to_place(model) -> int:
    """Memory a training step needs beside activations that is not taken yet when the decision is made:
    the weights not yet on the training device (the Trainer moves them there later), and for every trainable
    parameter its gradient and AdamW's two moments."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tensors = [*model.parameters(), *model.buffers()]
    elsewhere = sum(t.numel() * t.element_size() for t in tensors if t.device.type != device)
    training_state = sum(3 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return elsewhere + training_state


def free_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def choose_checkpointing(
    setting: bool | str,
    model_config,
    batch: int,
    sequence: int,
    precision: str,
    share: float = 0.5,
    model=None,
) -> dict:
    """Decide train.gradient_checkpointing; 'auto' turns it on when activations would take over `share` of the
    memory left free once `model` is on the device with its gradients and optimizer state."""
    if setting != "auto":
        return {"enabled": bool(setting), "reason": "set in the config"}
    needed = activation_bytes(model_config, batch, sequence, precision)
    if needed is None:
        return {"enabled": False, "reason": "auto: architecture not recognized for the estimate; off"}
    # Measured now, the device does not hold the weights yet (the Trainer moves them later): count them in.
    pending = bytes_still_to_place(model) if model is not None else 0
    free = max(0, free_bytes() - pending)
    enabled = needed > share * free
    return {
        "enabled": enabled,
        "estimated_activation_mb": round(needed / 2**20, 1),
        "free_memory_mb": round(free / 2**20, 1),
        "weights_and_optimizer_mb": round(pending / 2**20, 1),
        "reason": (
            f"auto: a step's activations (~{needed / 2**20:,.0f} MB for batch {batch} x {sequence} tokens) "
            f"{'exceed' if enabled else 'fit in'} {share:.0%} of the memory free once the weights, gradients "
            f"and optimizer state are placed ({free / 2**20:,.0f} MB)"
        ),
    }
