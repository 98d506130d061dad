"""The public Python surface: every CLI verb is one of these calls (cli.VERBS maps each verb to its function)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tunesmith.config import Config, DataConfig, load_config, starter_config
from tunesmith.console import say, world_size
from tunesmith.data import lengths
from tunesmith.data.prepare import CheckedData
from tunesmith.data.prepare import check_data as _check_rows
from tunesmith.data.templates import LossMask
from tunesmith.errors import TunesmithError
from tunesmith.registry import get_task
from tunesmith.run_folder import RUN_DIR_ENV, RunFolder
from tunesmith.training import distributed


def _config(config: Config | str | Path, overrides: list[str] | None) -> tuple[Config, str]:
    if isinstance(config, Config):
        return config, "run"
    return load_config(config, overrides), Path(config).stem


def _run_for(run_dir: str | Path, verb: str) -> tuple[RunFolder, object]:
    """The run folder and its Task, refusing a verb the task's runs do not answer."""
    run = RunFolder.open(run_dir)
    task = get_task(run.load_config().task)
    task.require(verb, run)
    return run, task


def init(kind: str = "sft") -> str:
    """A commented starter config."""
    return starter_config(kind)


def check_data(
    target: Config | str | Path, overrides: list[str] | None = None, preview: int = 0
) -> CheckedData:
    """Validate a config's data, or one data file, without training; problems are in .problems.

    preview > 0: the first `preview` training examples as the model sees them (the training template's text, the
    trained part marked) in .report["preview"]; for a config only (a data file alone names no template).
    """
    if isinstance(target, (str, Path)) and Path(target).suffix.lower() not in {".yaml", ".yml"}:
        data_cfg = DataConfig(train_file=str(Path(target).resolve()), validation_ratio=0.0, on_error="skip")
        checked = _check_rows(data_cfg)
        checked.report["lengths"] = lengths.not_checked()
        return checked
    cfg, _ = _config(target, overrides)
    every_row = cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_error": "skip"})})
    checked = get_task(cfg.task).validated_data(every_row)  # on_error skip: every bad row listed, none raised
    renderer = _renderer(cfg, checked)
    checked.report["lengths"] = (
        lengths.length_report(checked, cfg.data, renderer)
        if not isinstance(renderer, str)
        else lengths.not_checked(renderer)
    )
    if cfg.data.mix or cfg.data.replay:
        from tunesmith.data.mix import planned

        checked.report["mix"] = planned(checked, cfg.data)
    if preview:
        from tunesmith.data.preview import preview as rendered

        template = None if isinstance(renderer, str) else renderer
        checked.report["preview"] = rendered(checked.train, template, LossMask.of(cfg.data), preview)
    return checked


def _renderer(cfg: Config, checked: CheckedData):
    """The config's tokenizer and template (as training renders), or why they cannot be loaded (said, not raised)."""
    from tunesmith.data.prepare import build_renderer
    from tunesmith.models.loading import default_cache_dir, load_tokenizer, resolve_model

    try:
        path = resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))
        return build_renderer(load_tokenizer(path, cfg.model), cfg.data, checked)
    except TunesmithError as exc:
        return f"token lengths not checked: {exc}"


def train(
    config: Config | str | Path,
    overrides: list[str] | None = None,
    resume: bool = False,
    callbacks=(),
    nproc: int = 1,
    cluster: distributed.Cluster | None = None,
) -> dict:
    """Fine-tune as the config says; returns the run summary (also in RUN/run.json).

    nproc > 1 runs data-parallel on that many local processes (gloo on CPU, NCCL on GPUs) through torchrun;
    `cluster` places this launch among several machines (c10d rendezvous) and sets torchrun's restarts after a
    worker dies (the restarted group resumes from the last checkpoint). Every node runs the same call.
    """
    cluster = cluster or distributed.Cluster(processes=nproc)
    cluster.check()
    _check_run_folder_visible(config)
    cfg, name = _config(config, overrides)
    task = get_task(cfg.task)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if cluster.launches and not _is_worker():
        task.validated_data(cfg)  # fail fast, before starting any worker
        distributed.per_device_batch_for(cfg.train.batch_size, cluster.world)
        distributed.check_engine(cfg.train.distributed)
        if cfg.train.launcher == "ray":
            from tunesmith.training import ray_launch

            ray_launch.check_ray(cluster)
        if cluster.nodes > 1:
            run = RunFolder.for_nodes(cfg, name, resume)
        else:
            run = RunFolder.for_training(cfg, name, resume)
        if not resume and cluster.node_rank == 0:  # the other nodes' workers read it from the shared folder
            run.save_config(cfg)
        if cfg.train.launcher == "ray":
            ray_launch.launch(_ray_worker, str(run.config_file), str(run.path), cluster, resume)
        else:
            distributed.launch(str(run.config_file), str(run.path), cluster, resume)
        return run.read_summary().to_dict() | {"run_dir": str(run.path)}
    from tunesmith.training import threads  # imports transformers' Trainer (and peft): not for `data check`

    if threads.governed(cfg.train.num_threads, world_size()):
        threads.fit_to_load(
            say
        )  # what runs before the first step (self-replay's generation, evaluations) too
    return task.train(cfg, default_name=name, resume=resume, callbacks=callbacks)


def launch(
    config: str | Path,
    target: str,
    nodes: int = 1,
    gpus_per_node: int = 1,
    engine: str | None = None,
    overrides: list[str] | None = None,
) -> str:
    """A ready launch file for a cluster: an sbatch script (`slurm`, srun + torchrun), an `accelerate` config
    (DDP, FSDP2, ZeRO-2/3) or a `skypilot` task; `engine` None keeps the config's train.distributed."""
    from tunesmith.training import launch_files

    cfg, _ = _config(config, overrides)
    plan = launch_files.plan_for(cfg, config, nodes, gpus_per_node, engine, overrides or [])
    return launch_files.write(target, plan)


def _ray_worker(settings: dict) -> None:
    """One Ray Train worker: the same `train` call a torchrun worker makes (Ray has set RANK and WORLD_SIZE)."""
    from tunesmith.training.ray_launch import worker_environment

    worker_environment(settings)
    train(settings["config_file"], resume=settings["resume"])


def _check_run_folder_visible(config) -> None:
    """A worker on another node reads the config node 0 wrote into the run folder (or the launch file's config): if
    it is missing here, the storage is not shared (the usual multi-node mistake), not a config to create."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if _is_worker() and run_dir and isinstance(config, (str, Path)) and not Path(config).exists():
        raise TunesmithError(
            f"{config}: this node cannot see it (run folder {run_dir}); the config and output.dir must be on "
            "storage every node mounts (NFS, Lustre, a shared bucket)"
        )


def _is_worker() -> bool:
    """A process torchrun or accelerate started (they set LOCAL_RANK even in a group of one)."""
    return "LOCAL_RANK" in os.environ


def predict(
    run_dir: str | Path, source: str | Path, output: str | Path | None = None, batch_size: int = 32
) -> dict:
    """Label a table's rows or a folder's files with a classification run (transcribe them with a
    speech-recognition run; write a target for each source with a seq2seq run); writes JSONL or CSV."""
    run, task = _run_for(run_dir, "predict")
    return task.predict(run, source, output, batch_size)


def generate(
    run_dir: str | Path, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0
) -> list[str]:
    """Answer prompts with a run's tuned model, formatted exactly as in training."""
    run, task = _run_for(run_dir, "generate")
    return task.load_run(run).answer(prompts, max_new_tokens, temperature)


def merge(run_dir: str | Path, output: str | Path | None = None) -> dict:
    """Merge a run's LoRA/DoRA adapter into its base; write a standalone folder and check logits parity."""
    from tunesmith.export.merge import merge_adapter

    run, task = _run_for(run_dir, "merge")
    target = Path(output) if output else run.path / "merged"
    if target.exists():
        raise TunesmithError(f"{target} already exists; remove it or pass --output to write elsewhere")
    tuned = task.load_run(run)
    if not hasattr(tuned.model, "merge_and_unload"):
        raise TunesmithError(
            f"{run.path}: the run trained full weights ({run.read_summary().method}); there is no adapter to merge"
        )
    merged, parity = merge_adapter(tuned.model, tuned.renderer)
    merged.save_pretrained(target)
    tuned.renderer.tokenizer.save_pretrained(target)
    record = {"source_run": str(run.path), **parity}
    (target / "merge.json").write_text(json.dumps(record, indent=2))
    return {**record, "output": str(target)}


def export(
    run_dir: str | Path,
    fmt: str,
    output: str | Path | None = None,
    quantize: str | None = None,
    max_drop: float | None = None,
    max_kl: float | None = None,
) -> dict:
    """Write a run's model as safetensors, ONNX, TorchScript or GGUF, proven against PyTorch; writes export.json.

    Quantized exports are refused beyond a quality loss: `max_drop` (int8: accuracy points or validation-loss
    increase; GGUF: top-1 disagreement) and, for GGUF, `max_kl` (mean KL divergence per token).
    """
    from tunesmith.export.formats import export as _export

    return _export(run_dir, fmt, output, quantize, max_drop, max_kl)


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
    reasoning: str = "separate",
):
    """The FastAPI app serving these runs (OpenAI-compatible); LoRA runs over one base share it in memory.

    reasoning: a chat answer's <think>...</think> block in the message's reasoning_content (separate) or left
    inline in its content (inline)."""
    import os

    from tunesmith.serving.app import create_app
    from tunesmith.serving.registry import Registry

    key = api_key or os.environ.get("TUNESMITH_API_KEY") or None
    return create_app(
        Registry(run_dirs), key, max_concurrency, max_tokens_cap, max_prompt_tokens, reasoning=reasoning
    )


def serve(run_dirs: list[str | Path], host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Serve runs over HTTP with uvicorn until interrupted; options as for serve_app."""
    import uvicorn

    uvicorn.run(serve_app(run_dirs, **options), host=host, port=port, log_level="info")


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    baseline: bool = False,
    generations: int | None = None,
    bench: list[str] | None = None,
    judge: str | None = None,
    judge_model: str | None = None,
) -> dict:
    """Score a finished run on its validation split (or `data`); with baseline, the untouched base model too.

    bench: lm-evaluation-harness benchmarks instead (multiple-choice .jsonl files, lm-eval task .yaml files
    pointing at local data, or "capitals", the built-in knowledge probe), base and tuned, with standard errors.
    judge: an OpenAI-compatible server's address (its first model, or `judge_model`) or a run folder, comparing
    base and tuned answers on the held-out prompts in both orders: win / tie / loss.
    """
    if bench:
        from tunesmith.commands.benchmark import benchmark_run

        return benchmark_run(RunFolder.open(run_dir), bench)
    from tunesmith.commands.evaluate import evaluate_run

    return evaluate_run(RunFolder.open(run_dir), data, baseline, generations, judge, judge_model)


def report(run_dir: str | Path) -> Path:
    """(Re)write RUN/report.html from the run folder's own files."""
    from tunesmith.report.run_report import write_run_report

    run = RunFolder.open(run_dir)
    return write_run_report(run, get_task(run.load_config().task))


def compare(run_dirs: list[str | Path], output: str | Path | None = None) -> Path:
    """One HTML page comparing runs: curves, final metrics, settings that differ."""
    from tunesmith.report.compare import write_comparison

    return write_comparison([RunFolder.open(r) for r in run_dirs], output)


def plan(
    source: str | Path,
    time_budget: str | float,
    memory: str | None = None,
    model: str | None = None,
    task: str | None = None,
    output: str | Path | None = None,
) -> dict:
    """A config that fits `time_budget` (and `memory`) on this machine, from the data and measured probes."""
    from tunesmith.commands.plan import plan as make_plan

    return make_plan(source, time_budget, memory, model, task, output)


def sweep(
    config: str | Path,
    overrides: list[str] | None = None,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    time_limit: str | float | None = None,
) -> dict:
    """Hyperparameter search over the config's `sweep.space` with Optuna; returns the best trial and paths.
    time_limit ('1h', seconds): trials start only while one fits, each bounded by the time left."""
    from tunesmith.commands.plan import parse_budget
    from tunesmith.commands.sweep import run_sweep

    seconds = parse_budget(time_limit) if time_limit is not None else None
    return run_sweep(Path(config), overrides or [], trials, storage, study_name, seconds)


def quickstart(
    directory: str | Path = "quickstart", overrides: list[str] | None = None, kind: str = "sft"
) -> dict:
    """The embedded demo: build the data and config under `directory`, train, print base vs tuned.

    kind preference: SmolLM2 learns BBC's headline style from preference pairs (in directory/preference), then
    its held-out pairs and generations are scored beside the base (`tunesmith eval --baseline`).
    kind tools: SmolLM2 learns to call functions and answer from their results (in directory/tools), then its
    held-out calls and answers are scored beside the base.
    """
    demos = {"sft": _quickstart_sft, "preference": _quickstart_preference, "tools": _quickstart_tools}
    if kind not in demos:
        raise TunesmithError(f"quickstart {kind}: unknown demo; choose one of {', '.join(demos)}")
    return demos[kind](Path(directory), overrides)


def _quickstart_sft(directory: Path, overrides: list[str] | None) -> dict:
    from tunesmith import quickstart as demo

    summary = train(demo.prepare(directory), overrides)
    demo.print_comparison(summary)
    return summary


def _quickstart_preference(directory: Path, overrides: list[str] | None) -> dict:
    from tunesmith import quickstart_preference as demo

    summary = train(demo.prepare(directory / "preference"), overrides)
    demo.print_comparison(summary, evaluate(summary["run_dir"], baseline=True))
    return summary


def _quickstart_tools(directory: Path, overrides: list[str] | None) -> dict:
    from tunesmith import quickstart_tools as demo

    summary = train(demo.prepare(directory / "tools"), overrides)
    demo.print_comparison(summary, evaluate(summary["run_dir"], baseline=True))
    return summary
