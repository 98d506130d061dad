"""Fine-tuning methods, one small module each, found by name in one registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunesmith.config import MethodConfig


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable[[Any, MethodConfig], Any]  # (model, config) -> model ready to train
    is_adapter: bool  # saves an adapter (merge-able) rather than full weights
    quantization_config: Callable[[MethodConfig], Any] = lambda cfg: None


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    return REGISTRY[name]


def count_parameters(model) -> dict[str, int | float]:
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if parameter.__class__.__name__ == "Params4bit":
            count *= 2  # two 4-bit weights are stored per byte
        total += count
        if parameter.requires_grad:
            trainable += count
    return {
        "trainable": trainable,
        "total": total,
        "trainable_percent": round(100 * trainable / max(total, 1), 4),
    }


from tunesmith.methods import features, freeze, full, lora, qlora  # noqa: E402,F401  (each registers itself)
