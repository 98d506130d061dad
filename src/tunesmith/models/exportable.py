"""A finished run as something to export: its merged fp32 model, processor, probe inputs and validation batches.

Each task builds one (Task.exportable); the export formats consume it without knowing the task."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tunesmith.models.quantized import dequantized_adapter, is_8bit

MAX_VALIDATION_EXAMPLES = 256  # enough to see what int8 costs, small enough to run in seconds


@dataclass
class Exportable:
    task: str  # the task's name, recorded in export.json
    auto_class: str  # the transformers Auto class that reloads a saved folder
    metric_name: str  # what metric_sums measures on the validation batches (e.g. validation_loss)
    metric_sums: Callable[[np.ndarray, np.ndarray], tuple[float, int]]  # (logits, labels) -> (sum, count)
    model: torch.nn.Module  # adapters merged, fp32, eval mode, on the CPU
    processor: object  # tokenizer, image processor or feature extractor: saved next to every export
    input_names: list[str]
    probes: list[dict[str, torch.Tensor]]  # input sets of different shapes for parity; the last one is padded
    validation: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = field(default_factory=list)


class LogitsModule(torch.nn.Module):
    """Positional tensors in, logits out: the signature ONNX and TorchScript graphs need."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]):
        super().__init__()
        self.model, self.input_names = model, input_names
        self.extra = (
            {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
        )

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, tensors, strict=True)), **self.extra).logits


def merged(model) -> torch.nn.Module:
    if is_8bit(
        model
    ):  # an adapter over an 8-bit base: merged into the dequantized weights, not rounded again
        model = dequantized_adapter(model)
    if hasattr(model, "merge_and_unload"):  # a peft model: fold the adapters into the weights
        model = model.merge_and_unload()
    return model.float().cpu().eval()
