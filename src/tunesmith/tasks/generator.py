"""A finished run of a causal language model, shared by the tasks that train one (causal-lm, preference) and by
seq2seq's base lookup: the tuned model with the renderer it trained with (a tasks.handles.Generator)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config import Config
from tunesmith.data.collate import PadCollator, pad_token_id
from tunesmith.data.templates import Renderer
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.generation import generate
from tunesmith.evaluation.lm import token_loss_sums
from tunesmith.methods import get_method
from tunesmith.models.exportable import Exportable, merged
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
    template = "chat" if summary.template == "chat" else "classic"
    return Renderer(tokenizer, template, reasoning_history=cfg.data.reasoning_history)


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
    return TunedLM(reload_weights(run, cfg, adapter_name, into), renderer, cfg)


def reload_weights(
    run: RunFolder, cfg: Config, adapter_name: str, into, auto_class: str = "AutoModelForCausalLM"
):
    """A finished generator run's weights in eval mode: full weights, or the adapter over the base as it was trained
    on (4-bit for qlora; joining `into`, a base already in memory, when given): the method says which."""
    model = get_method(cfg.method.name).reload(
        lambda weights, quantization: load_model(weights, cfg.model, quantization, auto_class),
        run.model_dir,
        lambda: base_model_path(run, cfg),
        cfg.method,
        adapter_name,
        into,
    )
    return model.eval()


# Prompts of two shapes (one, and two of different lengths) the exports' parity checks generate from.
PROBE_PROMPTS = (
    [(("user", "Write a headline about the weather."),)],
    [(("user", "Hi"),), (("user", "Sum up: rain, then sun."),)],
)


def exportable(tuned_lm: TunedLM, rows: list[dict], auto_class: str) -> Exportable:
    """What export needs of a finished causal LM: the merged model, left-padded prompt probes of two shapes, and
    `rows` (input_ids and labels, at most MAX_VALIDATION_EXAMPLES) in batches of 8 for the loss check."""
    renderer, cfg = tuned_lm.renderer, tuned_lm.cfg
    pad = pad_token_id(renderer.tokenizer)
    probes = []
    for prompts in PROBE_PROMPTS:
        ids = [renderer.encode_prompt(p) for p in prompts]
        width = max(map(len, ids))
        probes.append(
            {
                "input_ids": torch.tensor([[pad] * (width - len(i)) + i for i in ids]),
                "attention_mask": torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids]),
            }
        )
    collate = PadCollator(pad)
    validation = []
    for start in range(0, len(rows), 8):
        batch = collate(rows[start : start + 8])
        validation.append(({k: batch[k] for k in ("input_ids", "attention_mask")}, batch["labels"]))
    return Exportable(
        task=cfg.task,
        auto_class=auto_class,
        metric_name="validation_loss",
        metric_sums=token_loss_sums,
        model=merged(tuned_lm.model),
        processor=renderer.tokenizer,
        input_names=["input_ids", "attention_mask"],
        probes=probes,
        validation=validation,
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
