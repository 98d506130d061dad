"""`tunesmith export RUN --format FMT [--quantize int8]`: write, reload, and compare against PyTorch."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.exportable import Exportable, LogitsModule
from tunesmith.registry import get_task
from tunesmith.run_folder import RunFolder

FORMATS = ("safetensors", "onnx", "torchscript", "gguf")
# int8's largest allowed loss against fp32 on the validation split: accuracy points for classifiers, nats per
# token of validation loss for causal LMs. Dynamic int8 usually costs well under this; beyond it, refuse.
INT8_MAX_DROP = {"validation_accuracy": 0.02, "validation_loss": 0.05}
TOLERANCE = 1e-4  # fp32: the same computation in another runtime differs by rounding only


def _reference(ex: Exportable, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return LogitsModule(ex.model, ex.input_names)(*[inputs[n] for n in ex.input_names]).numpy()


def _write_safetensors(ex: Exportable, target: Path):
    """A plain transformers folder; reloaded through the Auto class that fits the task."""
    import transformers

    ex.model.save_pretrained(target)
    reloaded = getattr(transformers, ex.auto_class).from_pretrained(target).eval()
    module = LogitsModule(reloaded, ex.input_names)

    def run(inputs):
        with torch.no_grad():
            return module(*[inputs[n] for n in ex.input_names]).numpy()

    return run


def _write_onnx(ex: Exportable, target: Path):
    import onnxruntime

    probe = ex.probes[-1]  # the padded batch: a graph traced without padding would drop the mask handling
    dims = {name: {0: torch.export.Dim("batch")} for name in ex.input_names}
    for name in ex.input_names:
        if probe[name].dim() == 2 and probe[name].dtype == torch.long:  # token ids and masks: any length
            # An encoder-decoder's decoder ids have a length of their own (same-named Dims must be equal).
            dims[name][1] = torch.export.Dim(
                "decoder_sequence" if name.startswith("decoder_") else "sequence"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LogitsModule(ex.model, ex.input_names).eval(),
            tuple(probe[n] for n in ex.input_names),
            str(target / "model.onnx"),
            input_names=ex.input_names,
            output_names=["logits"],
            dynamic_shapes=(tuple(dims[n] for n in ex.input_names),),  # forward(*tensors): one varargs entry
            dynamo=True,
            external_data=False,
        )
    return _onnx_runner(target / "model.onnx", ex.input_names, onnxruntime)


def _onnx_runner(path: Path, names: list[str], onnxruntime):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(None, {n: inputs[n].numpy() for n in names})[0]


def _write_torchscript(ex: Exportable, target: Path):
    probe = ex.probes[-1]  # the padded batch, as for ONNX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(
            LogitsModule(ex.model, ex.input_names).eval(), tuple(probe[n] for n in ex.input_names)
        )
    traced.save(str(target / "model.pt"))
    loaded = torch.jit.load(str(target / "model.pt"))

    def run(inputs):
        with torch.no_grad():
            return loaded(*[inputs[n] for n in ex.input_names]).numpy()

    return run


def _difference(exported: np.ndarray, reference: np.ndarray, inputs: dict[str, torch.Tensor]) -> float:
    """Max |difference| of the logits at real tokens; a padding position's logits are undefined (it attends nothing)."""
    mask = inputs.get("attention_mask")
    gap = np.abs(exported - reference)
    if mask is not None and gap.ndim == 3 and tuple(mask.shape) == gap.shape[:2]:
        gap = gap[mask.numpy().astype(bool)]
    return float(gap.max())


WRITERS = {"safetensors": _write_safetensors, "onnx": _write_onnx, "torchscript": _write_torchscript}


def _validation_metric(ex: Exportable, run_logits) -> float | None:
    if not ex.validation:
        return None
    total = count = 0
    for inputs, labels in ex.validation:
        value, n = ex.metric_sums(run_logits(inputs), labels.numpy())
        total, count = total + value, count + n
    return round(total / max(count, 1), 6)


def _int8_gate(name: str, before: float | None, after: float | None, max_drop: float | None) -> dict:
    """How much int8 lost on the validation split, against the threshold; refuses beyond it."""
    limit = INT8_MAX_DROP.get(name, 0.0) if max_drop is None else max_drop
    if before is None or after is None:
        return {"max_drop": limit, "drop": None, "verdict": "not measured: the run has no validation split"}
    drop = round(
        after - before if name == "validation_loss" else before - after, 6
    )  # loss rises, accuracy falls
    if drop > limit:
        raise TunesmithError(
            f"--quantize int8 refused: {name} {before} -> {after} (a drop of {drop:g} > --max-drop {limit:g}); "
            "nothing was written. Export without --quantize, or allow more with --max-drop"
        )
    return {"max_drop": limit, "drop": drop, "verdict": f"{name} drop {drop:g} <= {limit:g}"}


def _quantize_int8(
    ex: Exportable, target: Path, fp32_metric: float | None, max_drop: float | None = None
) -> dict:
    """Dynamic int8 (weights int8, activations quantized on the fly) with onnxruntime's quantizer, gated."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, quantized = target / "model.onnx", target / "model.int8.onnx"
    quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8)
    run_int8 = _onnx_runner(quantized, ex.input_names, onnxruntime)
    int8_metric = _validation_metric(ex, run_int8)
    name = ex.metric_name
    return {
        "method": "onnxruntime dynamic int8 (QInt8 weights)",
        "file": quantized.name,
        "size_mb_before": round(source.stat().st_size / 2**20, 3),
        "size_mb_after": round(quantized.stat().st_size / 2**20, 3),
        "metric": name,
        "before": fp32_metric,
        "after": int8_metric,
        "change": None if fp32_metric is None or int8_metric is None else round(int8_metric - fp32_metric, 6),
        "max_abs_logit_difference": float(
            np.abs(run_int8(ex.probes[0]) - _reference(ex, ex.probes[0])).max()
        ),
        "gate": _int8_gate(name, fp32_metric, int8_metric, max_drop),
    }


def export(
    run_dir: str | Path,
    fmt: str,
    output: str | Path | None = None,
    quantize: str | None = None,
    max_drop: float | None = None,
    max_kl: float | None = None,
) -> dict:
    """Write the run's model in `fmt`, reload it, and refuse to finish if its logits differ from PyTorch's."""
    if fmt not in FORMATS:
        raise TunesmithError(f"--format {fmt}: unknown; choose one of {', '.join(FORMATS)}")
    if fmt == "gguf":
        from tunesmith.export.gguf import export_gguf

        return export_gguf(run_dir, output, quantize, max_kl=max_kl, max_drop=max_drop)
    if max_kl is not None:
        raise TunesmithError("--max-kl applies to --format gguf; int8 is gated by --max-drop")
    if quantize not in (None, "int8"):
        raise TunesmithError(
            f"--quantize {quantize}: --format {fmt} takes only int8; f16, q8_0 and k-quants are for --format gguf"
        )
    if quantize and fmt != "onnx":
        raise TunesmithError("--quantize int8 applies to --format onnx (onnxruntime's dynamic int8 for CPUs)")
    run = RunFolder.open(run_dir)
    target = Path(output) if output else run.path / "export" / fmt
    if target.exists():
        raise TunesmithError(f"{target} already exists; remove it or pass --output to write elsewhere")
    started = time.time()
    run.finished_summary("export")
    ex = get_task(run.load_config().task).exportable(run)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        run_export = WRITERS[fmt](ex, staging)
        differences = [_difference(run_export(p), _reference(ex, p), p) for p in ex.probes]
        if max(differences) > TOLERANCE:
            raise TunesmithError(
                f"export parity check failed: {fmt} logits differ from PyTorch's by {max(differences):.2e} "
                f"(> {TOLERANCE}); nothing was written"
            )
        ex.processor.save_pretrained(staging)
        record = {
            "format": fmt,
            "source_run": str(run.path),
            "task": ex.task,
            "inputs": ex.input_names,
            "parity": {
                "max_abs_logit_difference": max(differences),
                "tolerance": TOLERANCE,
                "probe_shapes": [list(p[ex.input_names[0]].shape) for p in ex.probes],
            },
        }
        if quantize:
            record["quantization"] = _quantize_int8(ex, staging, _validation_metric(ex, run_export), max_drop)
        record["files"] = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
        record["seconds"] = round(time.time() - started, 1)
        (staging / "export.json").write_text(json.dumps(record, indent=2))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record | {"output": str(target)}
