"""train.precision: auto, decided by measuring bf16 against fp32 at the model's own matrix shapes.

CPU flags say whether bf16 instructions exist; only a measurement says whether they are faster for this model
on this host (AVX2-only CPUs run bf16 products ~100x slower than fp32; AVX-512 BF16 and AMX run them 2-5x
faster). The probe takes well under a second once per host and model shape, and is cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from tunesmith.training.flops import gemm_shapes, has_gemm_shapes
from tunesmith.training.hardware import cpu_flags, cpu_has_fast_bf16, pick_precision

PROBE_TOKENS = (
    64  # rows of the probe's products: short, so bf16 on an AVX2-only CPU takes ~0.5 s, not seconds
)
PROBE_SECONDS = 0.15  # per precision, after one warm-up pass
BF16_MARGIN = 1.3  # bf16 must beat fp32 by this much: autocast adds casts the bare products do not show


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(dtype: torch.dtype, shapes: list[tuple[int, int, int]], seconds: float) -> float:
    """Rate of the products `shapes` in `dtype`, from the fastest pass: on a shared host the slower passes
    measure the other jobs. The first (warm-up) pass is not counted."""
    generator = torch.Generator().manual_seed(0)
    pairs = [
        (torch.randn(m, k, generator=generator).to(dtype), torch.randn(k, n, generator=generator).to(dtype))
        for m, k, n in shapes
    ]
    flops_per_pass = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in pairs:  # warm-up: first-call allocations and kernel selection
        a @ b
    fastest, started = float("inf"), time.perf_counter()
    while fastest == float("inf") or time.perf_counter() - started < seconds:
        begun = time.perf_counter()
        for a, b in pairs:
            a @ b
        fastest = min(fastest, time.perf_counter() - begun)
    return flops_per_pass / fastest / 1e9


def probe_key(shapes: list[tuple[int, int, int]]) -> str:
    """The host (CPU model, flags, torch version, threads) and the shapes: what the measured rates depend on."""
    host = [cpu_model_name(), sorted(cpu_flags()), torch.__version__, torch.get_num_threads(), shapes]
    return hashlib.sha256(json.dumps(host).encode()).hexdigest()[:16]


def probe_cpu(model_config, cache_dir: Path | None) -> dict:
    """fp32 and bf16 GFLOP/s at the model's shapes, measured once and then read from `cache_dir`."""
    shapes = gemm_shapes(model_config, PROBE_TOKENS)
    cache = Path(cache_dir) / "precision-probe" / f"{probe_key(shapes)}.json" if cache_dir else None
    if cache is not None and cache.exists():
        return json.loads(cache.read_text()) | {"cached": True}
    result = {
        "cpu": cpu_model_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shapes": [list(s) for s in shapes],
        "fp32_gflops": float(f"{matmul_gflops(torch.float32, shapes, PROBE_SECONDS):.4g}"),
        "bf16_gflops": float(f"{matmul_gflops(torch.bfloat16, shapes, PROBE_SECONDS):.4g}"),
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result))
    return result | {"cached": False}


def measured_gflops(decision: dict) -> float | None:
    """The probe's rate for the precision chosen (None on GPUs, where nothing was probed)."""
    probe = decision["probe"]
    return probe[f"{decision['precision']}_gflops"] if probe else None


def decide_precision(
    requested: str, model_config, cache_dir: Path | None, weights: torch.dtype = torch.float32
) -> dict:
    """Resolve train.precision into {"precision", "reason", "probe"}; the config keeps what the user wrote.
    `weights` (model.dtype) decides auto only where no probe runs (an architecture of unknown shapes)."""
    if not has_gemm_shapes(model_config):  # e.g. a convolutional network: no probe at its shapes
        precision = pick_precision(requested, weights)
        reason = f"{'auto' if requested == 'auto' else 'set in the config'}: {precision} (no probe: this "
        return {
            "precision": precision,
            "reason": reason + "architecture's matrix shapes are unknown)",
            "probe": None,
        }
    if torch.cuda.is_available():
        precision = pick_precision(requested)
        origin = "auto on a GPU" if requested == "auto" else "set in the config"
        return {"precision": precision, "reason": f"{origin}: {precision}", "probe": None}
    if requested != "auto":
        pick_precision(
            requested
        )  # an explicit bf16 on a CPU without bf16 units, or fp16 on a CPU, is refused
    probe = probe_cpu(
        model_config, cache_dir
    )  # measured on CPU whatever was asked: train.compile uses its rates
    rates = f"bf16 {probe['bf16_gflops']} vs fp32 {probe['fp32_gflops']} GFLOP/s at the model's shapes"
    if requested != "auto":
        return {"precision": requested, "reason": f"set in the config ({rates})", "probe": probe}
    if not cpu_has_fast_bf16():
        reason = f"auto: fp32, the CPU has no AVX-512 BF16 or AMX ({rates})"
        return {"precision": "fp32", "reason": reason, "probe": probe}
    if probe["bf16_gflops"] >= BF16_MARGIN * probe["fp32_gflops"]:
        return {"precision": "bf16", "reason": f"auto: bf16, measured faster ({rates})", "probe": probe}
    reason = f"auto: fp32, bf16 instructions present but not {BF16_MARGIN}x faster ({rates})"
    return {"precision": "fp32", "reason": reason, "probe": probe}


def frozen_linear_weights(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """Linear layers whose weights do not train and are not shared with an embedding (a tied LM head keeps
    fp32: the embedding's lookups would turn the whole residual stream to bf16)."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
        and m.weight.dtype == torch.float32
        and not m.weight.requires_grad
        and id(m.weight) not in embedded
        and (m.bias is None or not m.bias.requires_grad)
    ]


@contextlib.contextmanager
def frozen_weights_in_bf16(model: torch.nn.Module, enabled: bool = True) -> Iterator[dict]:
    """Store the frozen linear weights in bf16 while training under bf16 autocast, fp32 again afterwards.

    Autocast re-casts a frozen fp32 weight on every product (its cast cache keeps only trainable leaves); stored
    in bf16 it is read as is and takes half the memory. Trainable weights and optimizer state stay fp32. After
    training the weights are fp32 again (holding the bf16-rounded values the adapter was trained against), so
    generation and scoring outside autocast work unchanged.
    """
    layers = frozen_linear_weights(model) if enabled else []
    tensors = [t for m in layers for t in (m.weight, m.bias) if t is not None]
    saved_mb = sum(t.numel() for t in tensors) * 2 / 2**20
    for tensor in tensors:
        tensor.data = tensor.data.to(torch.bfloat16)
    try:
        yield {"layers": len(layers), "saved_mb": round(saved_mb, 1)}
    finally:
        for tensor in tensors:
            tensor.data = tensor.data.to(torch.float32)
