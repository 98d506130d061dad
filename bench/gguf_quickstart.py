"""Export a run (the quickstart's) as GGUF at each given type and keep what the checks measured, with what the
k-quant gates are set against, in bench/results/gguf_quickstart.json.

For each type: the file's size and tensor types, the reload check (mean KL per token and top-1 agreement against the
merged fp32 model), the template ids, llama.cpp's greedy answers against `tunesmith generate` (token for token and
up to ties) and the Ollama template. Each export runs with its quality gate opened, so a type the default gate would
refuse is measured all the same; `default_gate` and `passes_default_gate` say what the shipped gate does with it.
The anchor: on the same validation tokens, how far the fine-tune itself moved the model (KL(tuned || base) and the
top-1 disagreement of the tuned model with its base). A gate at or above it would let a file that lost the
fine-tune through; quantization noise must sit well below it. The meta block (bench/results_file.py) holds the
date, command, host (CPU flags: avx2, avx512_bf16, ...), load before and after, and library versions; gguf's and
llama-cpp-python's versions are beside it.

Run: .venv/bin/python bench/gguf_quickstart.py RUN f16 q8_0 q4_k_m q5_k_m
(RUN: a quickstart run, e.g. `tunesmith quickstart --dir /tmp/qs` makes /tmp/qs/runs/headlines; the files are
written to a temporary folder and removed, RUN is left as it was.)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from results_file import Provenance, write_results
from tunesmith import api
from tunesmith.export import gguf, gguf_checks
from tunesmith.registry import get_task
from tunesmith.run_folder import RunFolder


def library_versions() -> dict:
    found = {}
    for name in ("gguf", "llama-cpp-python"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def fine_tune_anchor(run_dir: str) -> dict:
    """KL(tuned || base) and top-1 agreement on the export's own validation tokens: the fine-tune's size."""
    run = RunFolder.open(run_dir)
    cfg = run.load_config()
    task = get_task(cfg.task)
    tuned = task.load_run(run)
    model = tuned.model.float().cpu().eval()
    plain, _tool_prompts = gguf.validation_conversations(task, cfg)  # tool prompts are checked on ids
    sequences = [
        tuned.renderer.encode_conversation(c)[0][: cfg.data.max_length]
        for c in plain[: gguf.MAX_CONVERSATIONS]
    ]
    kl_sum = agree = count = 0.0
    with torch.no_grad():
        for ids, mask in gguf_checks.batches(sequences):
            real = mask.bool()
            tuned_logits = model(input_ids=ids, attention_mask=mask).logits[real].double()
            with model.disable_adapter():  # the base model the run started from
                base_logits = model(input_ids=ids, attention_mask=mask).logits[real].double()
            p_log, q_log = tuned_logits.log_softmax(-1), base_logits.log_softmax(-1)
            kl_sum += (p_log.exp() * (p_log - q_log)).sum().item()
            agree += (tuned_logits.argmax(-1) == base_logits.argmax(-1)).sum().item()
            count += real.sum().item()
    return {
        "what": "the tuned model against its base, on the validation tokens the reload check uses",
        "sequences": len(sequences),
        "tokens": int(count),
        "mean_kl_tuned_vs_base": kl_sum / count,
        "top1_disagreement_tuned_vs_base": 1 - agree / count,
    }


def file_tensor_types(path: Path) -> dict:
    """How many tensors of each type the written file holds, read back from it (k-quants mix several)."""
    from gguf import GGUFReader

    return dict(Counter(tensor.tensor_type.name for tensor in GGUFReader(str(path)).tensors))


def measure(run_dir: str, quantize: str, folder: Path) -> dict:
    started = time.time()
    result = api.export(
        run_dir, "gguf", output=folder / quantize, quantize=quantize, max_kl=1e9, max_drop=1.0
    )
    seconds = time.time() - started
    checks = result["checks"]
    reload = {k: v for k, v in checks["reload"].items() if k not in ("loader", "max_kl", "max_drop")}
    default = gguf_checks.gate(quantize, None, None)
    disagreement = 1 - reload["top1_agreement"]
    return {
        "seconds": round(seconds, 1),
        "file_bytes": result["files"][result["file"]],
        "tensor_types_in_file": file_tensor_types(Path(result["output"]) / result["file"]),
        "quantizer": result.get("quantizer"),
        "reload": reload,
        "top1_disagreement": disagreement,
        "default_gate": default,
        "passes_default_gate": reload["mean_kl"] <= default["max_kl"] and disagreement <= default["max_drop"],
        "template": checks["template"],
        "llama_cpp": checks["llama_cpp"],
        "ollama_template": result["ollama_template"],
    }


def main() -> None:
    run_dir, types = sys.argv[1], sys.argv[2:]
    provenance = Provenance.begin()
    summary = RunFolder.open(run_dir).read_summary()
    figures = {
        "run": run_dir,
        "run_summary": {
            "base_model": summary.base_model,
            "method": summary.method,
            "global_step": summary.global_step,
            "validation_loss_before": summary.validation_loss_before,
            "validation_loss_after": summary.validation_loss_after,
        },
        "gguf_versions": library_versions(),
        "torch_threads": torch.get_num_threads(),
        "types": {},
    }
    figures["fine_tune_anchor"] = fine_tune_anchor(run_dir)
    print(json.dumps(figures["fine_tune_anchor"]))
    with tempfile.TemporaryDirectory(prefix="gguf-quickstart-") as folder:
        for quantize in types:
            figures["types"][quantize] = measure(run_dir, quantize, Path(folder))
            row = figures["types"][quantize]
            print(quantize, json.dumps({k: row[k] for k in ("seconds", "file_bytes", "top1_disagreement")}))
            print(" ", row["reload"]["verdict"], "|", row["llama_cpp"]["verdict"])
            print(write_results("gguf_quickstart", figures, provenance))  # kept as it goes


if __name__ == "__main__":
    main()
