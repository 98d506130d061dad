"""How many floating-point operations a causal-LM training step executes, counted from the model's config.

One place for the count, so that run.json's estimates (train.compile: auto) and bench/'s MFU agree.
"""

from __future__ import annotations


def block_matmul_weights(model_config) -> int:
    """Weights that take part in a matrix product inside the transformer blocks (attention and MLP)."""
    c = model_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    attention = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * kv_heads)
    return c.num_hidden_layers * (attention + 3 * c.hidden_size * c.intermediate_size)


def widths(model_config) -> tuple[int | None, int | None]:
    """(model width, MLP width) under the names transformers' configs use (BERT/Llama, T5, Whisper/BART)."""
    c = model_config
    hidden = getattr(c, "hidden_size", None) or getattr(c, "d_model", None)
    inner = (
        getattr(c, "intermediate_size", None)
        or getattr(c, "d_ff", None)
        or getattr(c, "encoder_ffn_dim", None)
    )
    return (hidden, inner) if isinstance(hidden, int) and isinstance(inner, int) else (None, None)


def has_gemm_shapes(model_config) -> bool:
    return widths(model_config)[0] is not None


def gemm_shapes(model_config, tokens: int) -> list[tuple[int, int, int]]:
    """(rows, inner, columns) of the products a block runs for `tokens` positions: q projection and MLP up/down."""
    hidden, inner = widths(model_config)
    return [(tokens, hidden, hidden), (tokens, hidden, inner), (tokens, inner, hidden)]


def training_flops(
    model_config,
    positions: int,
    context: int,
    head_positions: int,
    frozen_base: bool = True,
    recomputed: bool = False,
) -> float:
    """FLOPs executed by one training pass over `positions` token positions (padding included: it is computed).

    A frozen weight costs its forward product (2 FLOPs per weight and position) and the gradient for its input
    (2 more); a trained one adds its own gradient (2 more). Attention products (QK^T and AV, 4 x context x width
    per position and layer) cost three times their forward. The LM head runs at `head_positions` only (all of
    them without a sparse head). Gradient checkpointing (`recomputed`) runs the blocks' forward twice.
    """
    c = model_config
    per_weight = 4 if frozen_base else 6
    width = (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads) * c.num_attention_heads
    blocks_forward = 2 * block_matmul_weights(c) * positions
    attention_forward = 4 * context * width * c.num_hidden_layers * positions
    blocks = blocks_forward * per_weight / 2 + 3 * attention_forward
    if recomputed:
        blocks += blocks_forward + attention_forward
    head = per_weight * c.hidden_size * c.vocab_size * head_positions
    return float(blocks + head)
