"""train.kernels: which loss kernel and which Liger kernels a causal-LM run uses, chosen by measurement.

The LM head and loss run at the sparse head's supervised positions in one of three ways: `sparse_head` (the
plain head over every kept position of every row, then F.cross_entropy), `chunked_ce` (plain torch, only the
supervised rows, chunk by chunk: training/linear_cross_entropy.py) or `liger_ce` (Liger's fused Triton kernel,
CUDA only). auto times each candidate's forward and backward at the run's own shapes (rows, hidden size,
vocabulary, precision) and keeps the plain head unless another is measured faster; it saves memory at a loss of
speed only when the plain head's logits would not fit. Liger's RMSNorm, RoPE and SwiGLU replace the model's own
on CUDA where liger-kernel is installed and supports the architecture; elsewhere they are skipped with the reason.
The probe is cached per host and shapes; the decision, its reason and the timings go to run.json (`kernels`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tunesmith.errors import TunesmithError
from tunesmith.training.linear_cross_entropy import (
    IGNORE,
    chunked_linear_cross_entropy,
    liger_linear_cross_entropy,
    plain_linear_cross_entropy,
)

HEAD_LOSSES: dict[str, Callable] = {
    "sparse_head": plain_linear_cross_entropy,
    "chunked_ce": chunked_linear_cross_entropy,
    "liger_ce": liger_linear_cross_entropy,
}
LIGER_LAYERS = {"liger_rms_norm": "rms_norm", "liger_rope": "rope", "liger_swiglu": "swiglu"}

PROBE_ROWS = 128  # rows the head losses are timed at; a step's cost is the per-row time times its rows
PROBE_SECONDS = 0.3  # per candidate, after one warm-up pass
FASTER_BY = 1.1  # another head loss must beat the plain head by this much: a short probe, a shared host
LOGITS_SHARE = 0.25  # the plain head's logits may take this share of free memory before chunking is forced


def liger_unavailable() -> str | None:
    """Why Liger's kernels cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (Triton kernels); this run is on the CPU"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (`pip install 'tunesmith[kernels]'`)"
    return None


def liger_supports(model_type: str) -> bool:
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def head_loss_unavailable(name: str, head, sparse_lm_head: bool, sharded: bool) -> str | None:
    """Why the head loss `name` cannot replace the plain head for this model, or None."""
    if sharded:  # the head's weight is read after the forward, when FSDP or ZeRO-3 has sharded it again
        return "not with train.distributed fsdp or deepspeed on several processes"
    if not sparse_lm_head:
        return "it works at the sparse LM head's positions and train.sparse_lm_head is false"
    if type(head) is not torch.nn.Linear or head.bias is not None:  # e.g. a LoRA-adapted head, or a bias
        kind = f"{type(head).__module__}.{type(head).__name__}"
        return f"the LM head is a {kind} (bias: {head.bias is not None}), not a bias-free torch Linear"
    if name == "liger_ce":
        return liger_unavailable()
    return None


def supervised_shapes(rows: list[dict], batch_size: int) -> dict:
    """Per micro-batch, the rows the plain sparse head projects (batch x positions supervised in any of its
    rows) and the rows chunked_ce projects (the supervised ones alone): medians over the training rows in order."""
    plain, supervised = [], []
    for start in range(0, len(rows), batch_size):
        batch = [row["labels"][1:] for row in rows[start : start + batch_size]]
        columns = {i for labels in batch for i, label in enumerate(labels) if label != IGNORE}
        plain.append(len(batch) * len(columns))
        supervised.append(sum(label != IGNORE for labels in batch for label in labels))
    return {
        "plain_rows": int(statistics.median(plain)),
        "supervised_rows": int(statistics.median(supervised)),
    }


def time_head_loss(name: str, shape: dict, device: str) -> float:
    """Seconds of one forward + backward of head loss `name` over PROBE_ROWS random rows at `shape`: the fastest
    pass (on a shared host the slower ones measure the other jobs), after one warm-up pass."""
    generator = torch.Generator().manual_seed(0)
    width, vocabulary, dtype = shape["hidden_size"], shape["vocabulary"], getattr(torch, shape["weights"])
    hidden = torch.randn(PROBE_ROWS, width, generator=generator).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocabulary, width, generator=generator) / width**0.5).to(device, dtype)
    weight.requires_grad_(shape["train_head"])
    targets = torch.randint(0, vocabulary, (PROBE_ROWS,), generator=generator).to(device)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(shape["precision"])
    autocast = torch.autocast(device, dtype=half) if half else contextlib.nullcontext()

    def one_pass() -> float:
        began = time.perf_counter()
        with autocast:
            loss = HEAD_LOSSES[name](hidden, weight, targets)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        hidden.grad, weight.grad = None, None
        return time.perf_counter() - began

    one_pass()
    fastest, started = one_pass(), time.perf_counter()
    while time.perf_counter() - started < PROBE_SECONDS:
        fastest = min(fastest, one_pass())
    return fastest


def probe_key(shape: dict) -> str:
    """The host (CPU model or GPU, torch version, threads) and the shapes: what the timings depend on."""
    from tunesmith.training.precision import cpu_model_name

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model_name()
    host = [device, torch.__version__, torch.get_num_threads(), sorted(shape.items())]
    return hashlib.sha256(json.dumps(host).encode()).hexdigest()[:16]


def probe_head_losses(candidates: list[str], shape: dict, cache_dir: Path | None) -> dict:
    """Seconds per PROBE_ROWS rows of each candidate at `shape`, measured once and then read from `cache_dir`."""
    key = probe_key(shape | {"candidates": candidates})
    cache = Path(cache_dir) / "kernels-probe" / f"{key}.json" if cache_dir is not None else None
    if cache is not None and cache.exists():
        return json.loads(cache.read_text()) | {"cached": True}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    timings, failed = {}, {}
    for name in candidates:
        try:
            timings[name] = time_head_loss(name, shape, device)
        except Exception as error:  # a kernel that fails here (a Triton build, say) is left out, not fatal
            if name == "sparse_head":
                raise
            failed[name] = f"{type(error).__name__}: {str(error)[:200]}"
    result = {"rows": PROBE_ROWS, "seconds": {k: float(f"{v:.4g}") for k, v in timings.items()}}
    if failed:
        result["failed"] = failed
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result))
    return result | {"cached": False}


def logits_bytes(plain_rows: int, vocabulary: int) -> int:
    """The plain head's loss memory at its peak: fp32 logits, their softmax and their gradient."""
    return 3 * plain_rows * vocabulary * 4


def pick_head_loss(probe: dict, rows: dict, vocabulary: int, free: int) -> dict:
    """auto's head loss from the probe's timings: the fastest predicted per micro-batch (by FASTER_BY), unless
    the plain head's logits would not fit in LOGITS_SHARE of `free` memory (then the fastest that never holds
    them whole)."""
    candidates = list(probe["seconds"])
    projected = {
        name: rows["plain_rows" if name == "sparse_head" else "supervised_rows"] for name in candidates
    }
    predicted = {
        name: float(f"{seconds / probe['rows'] * projected[name]:.4g}")
        for name, seconds in probe["seconds"].items()
    }
    fastest = min(predicted, key=predicted.get)
    needed = logits_bytes(rows["plain_rows"], vocabulary)
    times = ", ".join(f"{name} {seconds * 1000:.3g} ms" for name, seconds in predicted.items())
    basis = (
        f"predicted per micro-batch of {rows['plain_rows']} head rows ({rows['supervised_rows']} supervised): "
        f"{times}"
    )
    record = {
        "probe": probe,
        "predicted_seconds": predicted,
        **rows,
        "plain_logits_mb": round(needed / 2**20, 1),
    }
    if needed > LOGITS_SHARE * free and len(candidates) > 1:
        fastest = min((n for n in candidates if n != "sparse_head"), key=predicted.get)
        reason = f"{fastest}: the plain head's logits (~{needed / 2**20:,.0f} MB) would exceed {LOGITS_SHARE:.0%} of free memory; {basis}"
        return {"head_loss": fastest, "reason": reason, **record}
    if fastest != "sparse_head" and predicted["sparse_head"] >= FASTER_BY * predicted[fastest]:
        return {"head_loss": fastest, "reason": f"{fastest}: measured faster; {basis}", **record}
    reason = f"sparse_head: no other head loss measured {FASTER_BY}x faster; {basis}"
    return {"head_loss": "sparse_head", "reason": reason, **record}


def decide_kernels(
    setting: str | list[str],
    model,
    precision: str,
    train_rows: list[dict],
    batch_size: int,
    sparse_lm_head: bool,
    sharded: bool,
    cache_dir: Path | None,
    free: int,
) -> dict:
    """Resolve train.kernels into {"head_loss", "liger", "reason", "skipped", ...}; the config keeps what the
    user wrote. An explicit kernel that cannot run here is refused with its reason."""
    plain = "sparse_head" if sparse_lm_head else None  # None: transformers' own head and loss
    if setting == "off":
        return {"head_loss": plain, "liger": [], "reason": "off in the config"}
    head, config = model.get_output_embeddings(), model.config.get_text_config()
    liger_reason = liger_unavailable() or (
        None if liger_supports(config.model_type) else f"liger-kernel has no kernels for {config.model_type}"
    )
    unavailable = {
        name: head_loss_unavailable(name, head, sparse_lm_head, sharded)
        for name in HEAD_LOSSES
        if name != plain
    } | dict.fromkeys(LIGER_LAYERS, liger_reason)
    requested = [] if setting == "auto" else list(setting)
    for name in requested:
        if unavailable[name]:
            raise TunesmithError(
                f"train.kernels: {name} cannot run here: {unavailable[name]}; remove it or use auto"
            )
    liger = [name for name in LIGER_LAYERS if name in requested or (setting == "auto" and not liger_reason)]
    shape = {
        "hidden_size": int(config.hidden_size),
        "vocabulary": int(head.weight.shape[0]),
        "precision": precision,
        "train_head": bool(head.weight.requires_grad),
        "weights": str(head.weight.dtype).removeprefix("torch."),
    }
    if setting != "auto":
        chosen = next((name for name in requested if name in HEAD_LOSSES), plain)
        return {"head_loss": chosen, "liger": liger, "reason": "set in the config", **shape}
    skipped = {name: why for name, why in unavailable.items() if why}
    if plain is None:
        reason = "auto: transformers' own head and loss (train.sparse_lm_head is false)"
        return {"head_loss": None, "liger": liger, "reason": reason, "skipped": skipped, **shape}
    candidates = [name for name in HEAD_LOSSES if name == plain or not unavailable[name]]
    probe = probe_head_losses(candidates, shape, cache_dir)
    chosen = pick_head_loss(probe, supervised_shapes(train_rows, batch_size), shape["vocabulary"], free)
    chosen["reason"] = "auto: " + chosen["reason"]
    return {**chosen, "liger": liger, "skipped": skipped, **shape}


def apply_liger(model, layers: list[str]) -> None:
    """Swap the model's RMSNorm, RoPE and SwiGLU for Liger's where `layers` names them (in place)."""
    if not layers:
        return
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    chosen = {LIGER_LAYERS[name]: True for name in layers}
    unchosen = {value: False for name, value in LIGER_LAYERS.items() if name not in layers}
    # the loss stays ours: the fused kernel is the head loss above, at the sparse head's positions
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(
        model=base, cross_entropy=False, fused_linear_cross_entropy=False, **chosen, **unchosen
    )


def describe(decision: dict) -> str:
    """One line for the console: what runs, and why."""
    liger = ", ".join(decision.get("liger") or []) or "none"
    head_loss = decision["head_loss"] or "transformers' own"
    return f"kernels: head loss {head_loss}, Liger layers {liger} ({decision['reason']})"
