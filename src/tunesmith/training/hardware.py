"""What the machine can do: precision choice, device description, threads."""

from __future__ import annotations

import os
import platform
from functools import cache

import torch

from tunesmith.errors import TunesmithError


@cache
def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16() -> bool:
    # bf16 matmuls are only fast with AVX-512 BF16 or AMX; on AVX2-only CPUs they are far slower than fp32.
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


HALF = {torch.bfloat16: "bf16", torch.float16: "fp16"}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def pick_precision(requested: str, weights: torch.dtype = torch.float32) -> str:
    """Resolve train.precision together with the dtype the weights loaded in (model.dtype).

    'auto' is the weights' own type when they are 16-bit, else bf16 on GPUs that have it, fp16 on older GPUs,
    fp32 on CPU. The result is checked against the weights (check_weights_dtype).
    """
    cuda = torch.cuda.is_available()
    if requested == "auto" and weights in HALF:
        precision = HALF[weights]
    elif requested == "auto":
        # fp32 on CPU until a bf16 training path is measured to pay (issue 6): without AVX-512 BF16/AMX a
        # bf16 matmul ran at 1.2 GFLOP/s against 129 in fp32 on a 2-core AVX2 host here.
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    else:
        precision = requested
    check_weights_dtype(weights, precision)
    if requested == "bf16" and not cuda and not cpu_has_fast_bf16():
        raise TunesmithError(
            "train.precision: bf16 on this CPU (no AVX-512 BF16 or AMX) runs about 100x slower than fp32; use fp32"
        )
    if requested == "fp16" and not cuda:
        raise TunesmithError("train.precision: fp16 needs a CUDA GPU; on CPU use bf16 (if supported) or fp32")
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise TunesmithError("train.precision: this GPU has no bf16 support; use fp16 or fp32")
    return precision


def check_weights_dtype(weights: torch.dtype, precision: str) -> None:
    """16-bit weights follow the device rules 16-bit precision does, and train in their own type only.

    Without this, model.dtype: float16 on a CPU trained silently (slowly, with updates lost to rounding), and
    train.precision: fp32 over bfloat16 weights recorded fp32 for arithmetic done in bfloat16.
    """
    if weights not in HALF:
        return
    cuda = torch.cuda.is_available()
    name = DTYPE_NAMES[weights]
    if weights == torch.float16 and not cuda:
        raise TunesmithError(
            f"model.dtype: the weights are {name}, which cannot be trained on a CPU (no float16 training "
            "kernels); set model.dtype: float32"
        )
    if weights == torch.bfloat16 and not cuda and not cpu_has_fast_bf16():
        raise TunesmithError(
            f"model.dtype: {name} weights on this CPU (no AVX-512 BF16 or AMX) train about 100x slower than "
            "float32; set model.dtype: float32"
        )
    if weights == torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
        raise TunesmithError(
            "model.dtype: this GPU has no bfloat16 support; set model.dtype: float16 or float32"
        )
    if precision != HALF[weights]:
        raise TunesmithError(
            f"model.dtype: {name} weights cannot train in {precision} (the arithmetic would be {name}); "
            f"set train.precision: {HALF[weights]} (or auto), or model.dtype: float32"
        )


def describe_hardware() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def library_versions() -> dict:
    """Versions of the libraries a run depends on ("not installed" where one is absent)."""
    from importlib.metadata import PackageNotFoundError, version

    import tunesmith

    versions = {"tunesmith": tunesmith.__version__, "torch": torch.__version__}
    for name in ("transformers", "peft", "accelerate", "datasets", "scikit-learn"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
