"""The public Python surface: every CLI verb is one of these calls."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.config import Config, DataConfig, load_config, starter_config
from tunesmith.data.prepare import CheckedData
from tunesmith.data.prepare import check_data as _check_rows
from tunesmith.errors import TunesmithError
from tunesmith.tasks import causal_lm, recipe
from tunesmith.training import distributed
from tunesmith.training.run_folder import RunFolder


def _config(config: Config | str | Path, overrides: list[str] | None) -> tuple[Config, str]:
    if isinstance(config, Config):
        return config, "run"
    return load_config(config, overrides), Path(config).stem


def _causal_lm_run(run_dir: str | Path, verb: str, instead: str) -> RunFolder:
    run = RunFolder.open(run_dir)
    task = run.load_config().task
    if task != "causal-lm":
        raise TunesmithError(f"{verb}: {run.path} is a {task} run; use `tunesmith {instead}` for it")
    return run


def init(kind: str = "sft") -> str:
    """A commented starter config."""
    return starter_config(kind)


def check_data(target: Config | str | Path, overrides: list[str] | None = None) -> CheckedData:
    """Validate a config's data, or one data file, without training; problems are in .problems."""
    if isinstance(target, (str, Path)) and Path(target).suffix.lower() not in {".yaml", ".yml"}:
        data_cfg = DataConfig(train_file=str(Path(target).resolve()), validation_ratio=0.0, on_error="skip")
        return _check_rows(data_cfg)
    cfg, _ = _config(target, overrides)
    data_cfg = cfg.data.model_copy(update={"on_error": "skip"})
    if cfg.task != "causal-lm":
        from tunesmith.data.labelled import check_labelled

        return check_labelled(data_cfg, cfg.task)
    return _check_rows(data_cfg)


def train(
    config: Config | str | Path,
    overrides: list[str] | None = None,
    resume: bool = False,
    callbacks=(),
    nproc: int = 1,
) -> dict:
    """Fine-tune as the config says; returns the run summary (also in RUN/run.json).

    nproc > 1 runs data-parallel on that many local processes (gloo on CPU, NCCL on GPUs) through torchrun.
    """
    cfg, name = _config(config, overrides)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if nproc > 1 and distributed.world_size() == 1:
        recipe(cfg.task).validated_data(cfg)  # fail fast, before starting any worker
        distributed.per_device_batch_for(cfg.train.batch_size, nproc)
        distributed.check_engine(cfg.train.distributed)
        run = RunFolder.for_training(cfg, name, resume)
        if not resume:
            run.save_config(cfg)
        distributed.launch(str(run.config_file), str(run.path), nproc, resume)
        return run.read_summary() | {"run_dir": str(run.path)}
    return recipe(cfg.task).train(cfg, default_name=name, resume=resume, callbacks=callbacks)


def predict(
    run_dir: str | Path, source: str | Path, output: str | Path | None = None, batch_size: int = 32
) -> dict:
    """Label a table's rows or a folder's files with a classification run; writes JSONL or CSV."""
    from tunesmith.tasks.classification_predict import predict as _predict

    return _predict(run_dir, source, output, batch_size)


def generate(
    run_dir: str | Path, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0
) -> list[str]:
    """Answer prompts with a run's tuned model, formatted exactly as in training."""
    from tunesmith.evaluation.generation import generate as _generate

    run = _causal_lm_run(run_dir, "generate", "predict")
    model, renderer, cfg = causal_lm.load_run_model(run)
    system = [("system", cfg.data.system_prompt)] if cfg.data.system_prompt else []
    conversations = [(*system, ("user", prompt)) for prompt in prompts]
    return _generate(model, renderer, conversations, max_new_tokens=max_new_tokens, temperature=temperature)


def merge(run_dir: str | Path, output: str | Path | None = None) -> dict:
    """Merge a run's LoRA/DoRA adapter into its base; write a standalone folder and check logits parity."""
    run = _causal_lm_run(run_dir, "merge", "predict")
    target = Path(output) if output else run.path / "merged"
    if target.exists():
        raise TunesmithError(f"{target} already exists; remove it or pass --output to write elsewhere")
    model, renderer, _ = causal_lm.load_run_model(run)
    if not hasattr(model, "merge_and_unload"):
        raise TunesmithError(
            f"{run.path}: the run trained full weights ({run.read_summary().get('method')}); there is no adapter to merge"
        )
    probe = torch.tensor([renderer.encode_prompt((("user", "Write a headline about the weather."),))])
    with torch.no_grad():
        adapter_logits = model(input_ids=probe).logits
        merged = model.merge_and_unload()
        merged_logits = merged(input_ids=probe).logits
    difference = (adapter_logits - merged_logits).abs().max().item()
    tolerance = 1e-4 if merged_logits.dtype == torch.float32 else 5e-2
    if difference > tolerance:
        raise TunesmithError(
            f"merge parity check failed: logits differ by {difference:.2e} (> {tolerance}); the adapter was not written"
        )
    merged.save_pretrained(target)
    renderer.tokenizer.save_pretrained(target)
    record = {"source_run": str(run.path), "max_abs_logit_difference": difference, "tolerance": tolerance}
    (target / "merge.json").write_text(json.dumps(record, indent=2))
    return {**record, "output": str(target)}


def export(
    run_dir: str | Path, fmt: str, output: str | Path | None = None, quantize: str | None = None
) -> dict:
    """Write a run's model as safetensors, ONNX or TorchScript, checked against PyTorch; writes export.json."""
    from tunesmith.export.formats import export as _export

    return _export(run_dir, fmt, output, quantize)


def push(
    run_dir: str | Path,
    repo: str,
    dry_run: bool = False,
    private: bool = False,
    output: str | Path | None = None,
) -> dict:
    """Upload a run's model with a generated model card; dry_run writes the folder that would be uploaded."""
    from tunesmith.export.hub import push as _push

    return _push(run_dir, repo, dry_run, private, output)


def serve_app(
    run_dirs: list[str | Path],
    api_key: str | None = None,
    max_concurrency: int = 4,
    max_tokens_cap: int = 512,
    max_prompt_tokens: int = 2048,
):
    """The FastAPI app serving these runs (OpenAI-compatible); LoRA runs over one base share it in memory."""
    import os

    from tunesmith.serving.app import create_app
    from tunesmith.serving.registry import Registry

    key = api_key or os.environ.get("TUNESMITH_API_KEY") or None
    return create_app(Registry(run_dirs), key, max_concurrency, max_tokens_cap, max_prompt_tokens)


def serve(run_dirs: list[str | Path], host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Serve runs over HTTP with uvicorn until interrupted; options as for serve_app."""
    import uvicorn

    uvicorn.run(serve_app(run_dirs, **options), host=host, port=port, log_level="info")


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    baseline: bool = False,
    generations: int | None = None,
) -> dict:
    """Score a finished run on its validation split (or `data`); with baseline, the untouched base model too."""
    from tunesmith.evaluation.evaluate import evaluate_run

    return evaluate_run(RunFolder.open(run_dir), data, baseline, generations)


def report(run_dir: str | Path) -> Path:
    """(Re)write RUN/report.html from the run folder's own files."""
    from tunesmith.report.run_report import write_run_report

    return write_run_report(RunFolder.open(run_dir))


def compare(run_dirs: list[str | Path], output: str | Path | None = None) -> Path:
    """One HTML page comparing runs: curves, final metrics, settings that differ."""
    from tunesmith.report.compare import write_comparison

    return write_comparison([RunFolder.open(r) for r in run_dirs], output)


def sweep(
    config: str | Path,
    overrides: list[str] | None = None,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
) -> dict:
    """Hyperparameter search over the config's `sweep.space` with Optuna; returns the best trial and paths."""
    from tunesmith.evaluation.sweep import run_sweep

    return run_sweep(Path(config), overrides or [], trials, storage, study_name)
