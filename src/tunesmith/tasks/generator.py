"""A finished run of a causal language model, shared by the tasks that train one (causal-lm, preference) and by
seq2seq's base lookup: the tuned model with the renderer it trained with (a tasks.handles.Generator)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config import Config
from tunesmith.data.templates import Renderer
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.generation import generate
from tunesmith.methods import get_method
from tunesmith.models.loading import default_cache_dir, load_model, load_tokenizer, resolve_model
from tunesmith.run_folder import RunFolder


@dataclass
class TunedLM:
    """A finished run's model (base + adapter, or full weights), its config and the renderer it trained with."""

    model: torch.nn.Module
    renderer: Renderer
    cfg: Config

    def answer(self, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0) -> list[str]:
        """Each prompt as one user turn (after the run's system prompt), rendered exactly as in training."""
        system = [("system", self.cfg.data.system_prompt)] if self.cfg.data.system_prompt else []
        conversations = [(*system, ("user", prompt)) for prompt in prompts]
        return generate(self.model, self.renderer, conversations, max_new_tokens, temperature=temperature)


def load_run_renderer(run: RunFolder) -> Renderer:
    """The run's tokenizer and template: prompts are rendered exactly as in training."""
    cfg = run.load_config()
    summary = run.read_summary()
    if not run.model_dir.exists():
        raise TunesmithError(
            f"{run.path}: no trained model yet (status: {summary.status}); finish training or --resume it"
        )
    tokenizer = load_tokenizer(str(run.model_dir), cfg.model)
    return Renderer(tokenizer, "chat" if summary.template == "chat" else "classic")


def base_model_path(run: RunFolder, cfg: Config) -> str:
    """The base the run trained from: as recorded, or resolved again from the config when it moved."""
    recorded = run.read_summary().base_model_path
    if recorded and Path(recorded).exists():
        return recorded
    return resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))


def load_run(run: RunFolder, adapter_name: str = "default", into=None) -> TunedLM:
    """The tuned model of a finished run; `into`: a peft model over the same base that takes this adapter too."""
    cfg = run.load_config()
    renderer = load_run_renderer(run)
    if (run.model_dir / "adapter_config.json").exists():
        if into is not None:
            into.load_adapter(str(run.model_dir), adapter_name=adapter_name)
            return TunedLM(into, renderer, cfg)
        from peft import PeftModel

        # The adapter is applied to the base as it was trained on (4-bit for QLoRA), so answers match training.
        quantization = get_method(cfg.method.name).quantization_config(cfg.method)
        base = load_model(base_model_path(run, cfg), cfg.model, quantization)
        model = PeftModel.from_pretrained(base, str(run.model_dir), adapter_name=adapter_name)
    else:
        model = load_model(str(run.model_dir), cfg.model)
    model.eval()
    return TunedLM(model, renderer, cfg)


# Prompts of two shapes (one, and two of different lengths) the exports' parity checks generate from.
PROBE_PROMPTS = (
    [(("user", "Write a headline about the weather."),)],
    [(("user", "Hi"),), (("user", "Sum up: rain, then sun."),)],
)


def eval_result(
    cfg, split: str, examples: int, scores: tuple, prompts: list, outputs: list, base_outputs: list
) -> dict:
    """`tunesmith eval` of a generator: the (tuned, base) scores, and each held-out prompt generated with its
    reference, the tuned and the base answer."""
    generated = [
        {
            "where": where,
            "prompt": messages[-1][1],
            "reference": reference,
            "output": output,
            "base_output": base,
        }
        for (where, messages, reference), output, base in zip(prompts, outputs, base_outputs, strict=True)
    ]
    tuned, base = scores
    return {
        "task": cfg.task,
        "split": split,
        "examples": examples,
        "tuned": tuned,
        "baseline": base,
        "generated": generated,
    }
