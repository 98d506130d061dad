"""train.compile: torch.compile of the transformer blocks, on for `auto` only where it pays back its warm-up.

Compiling costs a fixed time before the first step and then saves a fraction of every step. `auto` estimates the
run's training time from its planned tokens, the FLOPs per token and the matmul rate measured by the precision
probe, and compiles only when the time saved exceeds the compile time. The cost and gain are measurements
(CPU: RESOURCES.md, GPT-2-sized training, 2-core host); where none exists (GPUs here) auto stays off.
"""

from __future__ import annotations

import torch

from tunesmith.models.anatomy import transformer_blocks

# Measured on a 2-core CPU host of this project: ~86 s of compilation, then ~20% faster steps; that host ran fp32
# products at ~167 GFLOP/s. Compiling is CPU work too: on a slower (or busier) host it takes longer in proportion.
CPU_COMPILE_SECONDS = 86.0
CPU_STEP_GAIN = 0.20
CPU_REFERENCE_GFLOPS = 167.0


def decide_compile(
    setting: bool | str, planned_tokens: int, flops_per_token: float, gflops: float | None
) -> dict:
    """Resolve train.compile into {"enabled", "reason", ...the estimate}; the config keeps what the user wrote."""
    if setting is not True and setting is not False and setting != "auto":
        raise ValueError(f"train.compile: {setting!r}")
    if setting is not True and setting is not False:
        return _auto(planned_tokens, flops_per_token, gflops)
    return {"enabled": bool(setting), "reason": f"train.compile: {str(setting).lower()} in the config"}


def _auto(planned_tokens: int, flops_per_token: float, gflops: float | None) -> dict:
    if torch.cuda.is_available() or not gflops:
        return {
            "enabled": False,
            "reason": "auto: off, no measurement of torch.compile on this kind of device",
        }
    # Training time at the full measured matmul rate: a lower bound, so auto errs towards not compiling.
    estimated = planned_tokens * flops_per_token / (gflops * 1e9)
    saved = estimated * CPU_STEP_GAIN / (1 + CPU_STEP_GAIN)
    compile_seconds = (
        CPU_COMPILE_SECONDS * CPU_REFERENCE_GFLOPS / gflops
    )  # so the verdict does not follow the load
    enabled = saved > compile_seconds
    verdict = "on" if enabled else "off"
    return {
        "enabled": enabled,
        "reason": (
            f"auto: {verdict}, ~{estimated:.0f} s of training would save ~{saved:.0f} s against "
            f"~{compile_seconds:.0f} s of compiling"
        ),
        "estimated_train_seconds": round(estimated, 1),
        "estimated_saving_seconds": round(saved, 1),
        "compile_seconds": round(compile_seconds, 1),
    }


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile each transformer block in place (a block compiles once and is reused by every layer of its kind;
    the LM head and loss, which change shape with the sparse head, stay eager). Returns the blocks compiled."""
    blocks = transformer_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def planned_tokens(max_steps: int | None, epochs: float, batch_size: int, row_lengths: list[int]) -> int:
    """Tokens the run will train on: whole epochs of the rows, or max_steps batches of rows of the mean length."""
    if max_steps:
        return int(max_steps * batch_size * sum(row_lengths) / max(1, len(row_lengths)))
    return int(epochs * sum(row_lengths))
