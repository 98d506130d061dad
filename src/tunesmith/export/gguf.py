"""`tunesmith export RUN --format gguf`: one GGUF file for llama.cpp, Ollama and LM Studio, checked against the run.

Read top to bottom: merge the adapter (with its parity check), write the file with the run's tokenizer, template
and stop tokens, then check it: transformers reloads the file and gives the merged model's logits (quantized
types: KL and top-1 agreement under a threshold), the embedded template gives training's token ids, and
llama.cpp itself (llama-cpp-python, which `make setup` builds) answers the validation prompts as `tunesmith
generate` does. Without llama-cpp-python that last check cannot run, and the export says "not checked in
llama.cpp" on screen, in export.json and in its README.md, never more. A failed check leaves nothing behind.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import torch

from tunesmith.console import say
from tunesmith.data.conversation import uses_agent_features
from tunesmith.data.validate import Example
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.tool_calls import tool_turns
from tunesmith.export import gguf_checks, ollama
from tunesmith.export.chat_template import run_template
from tunesmith.export.gguf_writer import (
    K_QUANTS,
    QUANTIZATIONS,
    architecture_of,
    k_quantize,
    k_quantizer,
    vocabulary,
    write_gguf,
)
from tunesmith.export.merge import merge_adapter
from tunesmith.registry import get_task
from tunesmith.run_folder import RunFolder

MAX_CONVERSATIONS = 64  # validation conversations for the logits check: seconds on a CPU for a 135M model
MAX_PROMPTS = 20  # validation prompts for the template and llama.cpp checks


def validation_conversations(task, cfg) -> tuple[list, list[tuple]]:
    """The run's plain validation conversations that end with an answer (the prompts are what precedes it), and
    its tool and reasoning ones as (conversation before an assistant turn, tools) pairs."""
    checked = task.validated_data(cfg)
    examples = checked.validation or checked.train
    conversations = [getattr(e, "messages", None) for e in examples]
    plain = [c for c in conversations if c and c[-1][0] == "assistant" and not uses_agent_features(c)]
    with_tools = [e for e in examples if isinstance(e, Example)]
    return plain, [(turn.prompt, turn.tools) for turn in tool_turns(with_tools, MAX_PROMPTS)][:MAX_PROMPTS]


def _merged_fp32(tuned) -> tuple[torch.nn.Module, dict | None]:
    if hasattr(tuned.model, "merge_and_unload"):
        model, record = merge_adapter(tuned.model, tuned.renderer)
    else:
        model, record = tuned.model, None
    return model.float().cpu().eval(), record


def _model_name(run: RunFolder) -> str:
    """A name Ollama accepts (lowercase letters, digits, '.', '-', '_')."""
    return re.sub(r"[^a-z0-9._-]+", "-", run.path.name.lower()).strip("-") or "tuned"


def export_gguf(
    run_dir: str | Path,
    output: str | Path | None = None,
    quantize: str | None = None,
    max_kl: float | None = None,
    max_drop: float | None = None,
) -> dict:
    """Write RUN's model as GGUF with an Ollama Modelfile; refuse (writing nothing) if a proof fails."""
    quantize = quantize or "f16"
    if quantize not in QUANTIZATIONS:
        raise TunesmithError(f"--quantize {quantize}: GGUF export writes {', '.join(QUANTIZATIONS)}")
    run = RunFolder.open(run_dir)
    cfg = run.load_config()
    task = get_task(cfg.task)
    if "generate" not in task.verbs:  # GGUF runtimes run language models that answer prompts
        raise TunesmithError(
            f"--format gguf: {run.path} is a {cfg.task} run; GGUF holds language models (use --format onnx)"
        )
    target = Path(output) if output else run.path / "export" / f"gguf-{quantize}"
    if target.exists():
        raise TunesmithError(f"{target} already exists; remove it or pass --output to write elsewhere")
    started = time.time()
    if quantize in K_QUANTS:
        k_quantizer(quantize)  # refuse before the model is loaded
    limits = gguf_checks.gate(quantize, max_kl, max_drop)
    tuned = task.load_run(run)
    renderer = tuned.renderer
    model, merge_record = _merged_fp32(tuned)
    architecture, arch, _ = architecture_of(model)
    vocab = vocabulary(renderer, model.config.vocab_size)
    template = run_template(renderer)
    conversations, tool_prompts = validation_conversations(task, cfg)
    conversations = conversations[:MAX_CONVERSATIONS]
    system = [("system", cfg.data.system_prompt)] if cfg.data.system_prompt else []
    prompts = [c[:-1] for c in conversations[:MAX_PROMPTS]] or [(*system, ("user", "Hi"))]
    name = _model_name(run)
    file_name = f"{name}-{quantize}.gguf"

    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        record = {
            "format": "gguf",
            "source_run": str(run.path),
            "task": cfg.task,
            "architecture": architecture,
            "gguf_architecture": arch,
            "quantization": quantize,
            "file": file_name,
            "merge": merge_record,
            "template": renderer.kind,
            "system_prompt": cfg.data.system_prompt,
            "tokenizer_pre": vocab.pre,
            "stop_tokens": {renderer.tokenizer.convert_ids_to_tokens(s): s for s in vocab.stop_ids},
        }
        if quantize in K_QUANTS:
            source = staging / f"{name}-f16.tmp.gguf"
            record["tensor_types_before_quantizer"] = write_gguf(model, vocab, template, source, "f16", name)
            record["quantizer"] = k_quantize(source, staging / file_name, quantize)
            source.unlink()
        else:
            record["tensor_types"] = write_gguf(model, vocab, template, staging / file_name, quantize, name)

        sequences = [renderer.encode_conversation(c)[0][: cfg.data.max_length] for c in conversations]
        sequences = sequences or [renderer.encode_prompt(p) for p in prompts]
        checks = {"reload": gguf_checks.reload_check(model, staging, file_name, quantize, sequences, limits)}
        context = max(len(renderer.encode_prompt(p)) for p in prompts) + cfg.eval.max_new_tokens + 16
        llama = gguf_checks.open_llama(staging / file_name, max(context, 512))
        checks["template"] = gguf_checks.template_check(
            staging / file_name, renderer, prompts, llama, tool_prompts
        )
        checks["llama_cpp"] = gguf_checks.runtime_check(
            llama, model, renderer, prompts, cfg.eval.max_new_tokens, quantize
        )
        if llama is not None:
            llama.close()  # frees llama.cpp's copy of the model before the folder is renamed
        record["checks"] = checks

        meta = gguf_checks.metadata(staging / file_name)
        parts, record["ollama_template"] = ollama.checked_parts(template, meta["bos"], meta["eos"], prompts)
        if tool_prompts:  # the Go template is checked on plain chats only: say so where Ollama users look
            record["ollama_template"]["tools"] = ollama.TOOLS_NOT_RENDERED
            say(f"export: Ollama: {ollama.TOOLS_NOT_RENDERED}")
        stops = [renderer.tokenizer.convert_ids_to_tokens(s) for s in vocab.stop_ids]
        (staging / "Modelfile").write_text(
            ollama.modelfile(file_name, parts, stops, cfg.data.system_prompt, tools=bool(tool_prompts))
        )
        (staging / "README.md").write_text(ollama.readme(target.resolve(), file_name, name, record))
        record["files"] = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
        record["seconds"] = round(time.time() - started, 1)
        (staging / "export.json").write_text(json.dumps(record, indent=2))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record | {"output": str(target)}
