"""Fine-tuning methods, one small module each; each registers itself with register_method (tunesmith.registry).

A method says which weights train, how they are saved and how a finished run reloads. It owns its settings (a
pydantic class in its own module, mounted under `method.<section>`), declares what it needs from a task (`needs`,
matched against each task's `provides`), and asks the model's anatomy (tunesmith.models.anatomy) where things are,
so no task or config code has to name methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import Config, MethodConfig
from tunesmith.registry import METHODS, get_method, register_method

LORA_REFERENCE_SCALE = 2.0  # alpha / r of the default lora settings (r 8, alpha 16) the rates are set for


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable[[Any, MethodConfig], Any]  # (model, config) -> model ready to train
    is_adapter: bool  # saves an adapter (merge-able) over the base rather than full weights
    summary: str  # one line for docs and `tunesmith init`
    quantization_config: Callable[[MethodConfig], Any] = lambda cfg: None  # the base loads quantized
    needs: frozenset[str] = field(default_factory=frozenset)  # capabilities the task must provide
    trains_network: bool = True  # False: the network only embeds; a separate fitting step learns
    # The learning rate used when train.learning_rate is unset, per kind of model a recipe trains
    # (tunesmith.tasks.defaults: "classifier", a pretrained body with a new head; "generator", a causal LM).
    learning_rates: Mapping[str, float] = field(default_factory=dict)
    # Its own settings: a pydantic class (in the method's module) mounted under `method.<section>`; methods that
    # share settings share the section (lora, dora and qlora: method.lora). None: the method has none.
    section: str | None = None
    settings: type | None = None
    takes_8bit_base: bool = False  # adapters over a frozen base that model.quantization: int8 may load 8-bit

    def settings_of(self, cfg: MethodConfig) -> Any:
        """This method's settings in `cfg` (as written, or the defaults); None for a method without any."""
        return cfg.section(self.section) if self.section else None

    def default_learning_rate(self, kind: str, cfg: MethodConfig) -> tuple[float, str] | None:
        """(rate, why) for a model of `kind`; None when this method declares none (it takes no gradient steps)."""
        rate = self.learning_rates.get(kind)
        if rate is None:
            return None
        why = f"{self.name} on a {kind}"
        scale = getattr(self.settings_of(cfg), "scale", None)
        if scale is not None:  # an adapter's update is scaled by alpha / r: keep the step the same size
            rate *= LORA_REFERENCE_SCALE / scale
            why += (
                f", scaled for lora alpha/r = {scale:g} (the rate is for alpha/r = {LORA_REFERENCE_SCALE:g})"
            )
        return float(f"{rate:.3g}"), why

    def reload(
        self,
        load: Callable[[str, Any], Any],
        tuned_dir: str | Path,
        base_path: str | Callable[[], str],
        cfg: MethodConfig,
        adapter_name: str = "default",
        into: Any = None,
    ) -> Any:
        """A finished run's network. Full weights load from `tuned_dir`; an adapter loads over the base as it was
        trained on (4-bit where this method quantizes it, so answers match training). `load(weights,
        quantization_config)` loads a model the task's way (its Auto class, its head); `into`: a peft model over
        the same base, already in memory, that takes this adapter beside its own (the server's shared base);
        `base_path` may be a function, asked only when the base is loaded."""
        if not self.is_adapter:
            return load(str(tuned_dir), None)
        if into is not None:
            into.load_adapter(str(tuned_dir), adapter_name=adapter_name)
            return into
        from peft import PeftModel

        base = load(base_path() if callable(base_path) else base_path, self.quantization_config(cfg))
        return PeftModel.from_pretrained(base, str(tuned_dir), adapter_name=adapter_name)

    def config_problems(self, cfg: Config, provides: frozenset[str]) -> list[str]:
        """What in `cfg` this method cannot do, one line each (the task's capabilities are `provides`)."""
        problems = []
        missing = self.needs - provides
        if missing:
            usable = sorted(m.name for m in METHODS.values() if m.needs <= provides)
            problems.append(
                f"method.name: {self.name} needs {', '.join(sorted(missing))}, which task {cfg.task} does not "
                f"provide; use one of {', '.join(usable)}"
            )
        if cfg.model.quantization == "int8":
            problems += self._int8_problems(cfg.task, provides)
        if cfg.eval.reference and not self.trains_network:
            problems.append(
                f"eval.reference: method {self.name} never changes the network, so nothing can be forgotten"
            )
        return problems

    def _int8_problems(self, task: str, provides: frozenset[str]) -> list[str]:
        if not self.takes_8bit_base:
            usable = ", ".join(sorted(m.name for m in METHODS.values() if m.takes_8bit_base))
            if not self.trains_network:
                why = "never trains the network"
            elif not self.is_adapter:
                why = "updates the base's own weights, and 8-bit weights take no gradient steps"
            elif "4-bit base" in self.needs:
                why = "loads its base 4-bit already"
            else:
                why = "has no 8-bit path (it does not declare takes_8bit_base)"
            return [
                f"model.quantization: int8 is for adapters over a frozen base ({usable}), and method {self.name} "
                f"{why}; set method.name: lora, or remove model.quantization"
            ]
        if "8-bit base" not in provides:
            return [
                f"model.quantization: int8 is not for task {task} (causal language models only); remove it"
            ]
        return []


def register(method: Method) -> Method:
    return register_method(method)


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


__all__ = ["Method", "count_parameters", "get_method", "register"]

from tunesmith.methods import features, freeze, full, lora, qlora  # noqa: E402,F401  (each registers itself)
