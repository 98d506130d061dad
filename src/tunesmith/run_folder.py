"""A run is a folder that explains itself: config, data report, metrics, checkpoints, model, summary."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from tunesmith.config import Config, dump_config, load_config
from tunesmith.console import is_main
from tunesmith.errors import TunesmithError


def free_path(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... (before the suffix) that does not exist: nothing is overwritten."""
    candidates = [path] + [path.with_name(f"{path.stem}-{n}{path.suffix}") for n in range(2, 10_000)]
    return next(candidate for candidate in candidates if not candidate.exists())


STARTED_AT_ENV = "TUNESMITH_STARTED_AT"  # set by `tunesmith train`: when its process started
RUN_DIR_ENV = "TUNESMITH_RUN_DIR"  # set by the launcher so every rank uses the folder it created


@dataclass
class RunSummary:
    """run.json: what a run did and measured. Written and read only through this type: a field that is not
    declared here is refused when written (a typo cannot slip into run.json). Fields a run has not reached yet
    are None."""

    # -- what ran
    status: str = "unknown"  # running | stopped | killed | finished | pruned (a sweep trial)
    pruned_at_step: int | None = None  # a sweep trial stopped by the pruner: the step it was stopped at
    task: str | None = None  # the registered task's name
    base_model: str | None = None  # model.name as configured (hub id, folder or .gguf)
    base_model_path: str | None = None  # the local folder the base was loaded from
    method: str | None = None  # the registered method's name
    is_adapter: bool | None = None  # model/ holds an adapter over the base (LoRA, DoRA, QLoRA)
    parameters: dict | None = None  # {"trainable", "total", "trainable_percent"}
    precision: str | None = None  # the compute precision chosen (fp32, bf16, fp16)
    gradient_checkpointing: dict | None = None  # {"enabled", "reason"} as decided at run time
    precision_probe: dict | None = None  # train.precision: {"precision", "reason", "probe": measured GFLOP/s}
    frozen_weights_bf16: dict | None = None  # bf16 adapter runs: frozen weights kept in bf16
    compile: dict | None = None  # train.compile's decision: {"enabled", "reason", the estimate it rests on}
    kernels: dict | None = (
        None  # causal LM train.kernels: {"head_loss", "liger", "reason", "skipped", probe timings}
    )
    processes: int | None = None  # data-parallel processes, all nodes together
    nodes: int | None = None  # machines the processes ran on (--nnodes)
    restarts: int | None = None  # times torchrun restarted the group after a worker died (--max-restarts)
    threads: dict | None = (
        None  # CPU: torch's thread count chosen from other processes' load, and its changes
    )
    template: str | None = None  # causal LM: the prompt renderer used (chat or classic)
    stop_token_ids: list | None = None  # causal LM: tokens that end an answer
    defaults: dict | None = None  # settings left unset, chosen at run time: key -> {"value", "why"}
    hardware: dict | None = None  # CPU/GPU description
    versions: dict | None = None  # library versions
    # -- classification
    labels: list | None = None  # the label names, in id order
    multi_label: bool | None = None  # several labels per example
    head: str | None = None  # whether the classifier head was kept or made new
    # -- speech recognition
    speech: dict | None = None  # SpecAugment applied, generate()'s language/task, encoder frozen, normalizer
    # -- preference tuning
    preference: dict | None = None  # {"loss", "beta", "reference"}
    pairs_before: dict | None = None  # held-out preference pairs scored by the base model
    pairs_after: dict | None = None  # the same pairs scored by the tuned model
    # -- training
    global_step: int | None = None  # optimizer steps taken
    train_loss: float | None = None  # mean training loss over the run
    train_seconds: float | None = None  # time in training steps (evaluations and checkpoint writes left out)
    train_tokens: int | None = None  # tokens trained on
    tokens_per_second: float | None = None  # train_tokens / train_seconds: training only
    examples_per_second: float | None = None  # for inputs that are not tokens (images, audio)
    best_checkpoint: str | None = None  # the checkpoint the final weights come from
    best_metric: float | None = None  # its train.metric value
    peak_memory_mb: float | None = None  # peak RSS (CPU) or allocated GPU memory
    wall_seconds: float | None = None  # the whole run, data to report
    time_budget: dict | None = None  # train.time_budget: the budget, the pace measured, where the run was cut
    plan: dict | None = None  # `tunesmith plan`'s prediction beside the actual time and peak memory
    # -- evaluation
    validation_loss_before: float | None = None  # the untouched model on the validation split
    validation_loss_after: float | None = None  # the final weights on the validation split
    validation: dict | None = None  # final validation metrics (accuracy, F1, ...; preference rewards)
    test_before: dict | None = None  # the untouched model on the test split (causal LM: loss, perplexity)
    test: dict | None = None  # the final weights on the test split: nothing was tuned or chosen on it
    reference_before: dict | None = None  # forgetting check: the reference score before training
    forgetting: dict | None = None  # forgetting check: before, after, drift, warning
    benchmarks_before: dict | None = None  # eval.benchmarks: lm-eval scores of the model before training
    benchmarks: dict | None = None  # eval.benchmarks: per task base and tuned lm-eval scores, the difference
    overfitting: dict | None = None  # the overfitting signal from the loss curves
    collapse: dict | None = None  # the model gives one answer whatever the input: {"kind", "seen", "causes"}

    @classmethod
    def from_dict(cls, record: dict) -> RunSummary:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})  # keys of older releases are ignored

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    # A read-only mapping view, for report templates and callers that read one key by name.
    def get(self, key: str, default=None):
        value = getattr(self, key, None)
        return default if value is None else value

    def __getitem__(self, key: str):
        value = getattr(self, key, None)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: str) -> bool:
        return getattr(self, key, None) is not None


class RunFolder:
    def __init__(self, path: Path):
        self.path = path
        # a training run's clock (train.time_budget): the `tunesmith train` command's start, or now (the API)
        self.opened_at = float(os.environ.get(STARTED_AT_ENV, time.time()))

    config_file = property(lambda self: self.path / "config.yaml")
    data_report = property(lambda self: self.path / "data_report.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "run.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    model_dir = property(lambda self: self.path / "model")
    samples = property(lambda self: self.path / "samples.jsonl")

    @classmethod
    def for_training(cls, config: Config, default_name: str, resume: bool) -> RunFolder:
        """A new folder (name, name-2, name-3, ...: an earlier run is never reused), or with resume the latest.

        The latest folder is reused when it holds a start that failed before training (no run.json, no
        checkpoint, no model): retrying a broken config does not leave a trail of empty numbered folders."""
        launched = os.environ.get(RUN_DIR_ENV)
        if launched:  # a rank started by `--nproc`: the launcher already chose the folder
            return cls(Path(launched))
        root = Path(config.output.dir)
        name = config.output.name or default_name
        candidates = [root / name] + [root / f"{name}-{n}" for n in range(2, 10_000)]
        existing = [path for path in candidates[:1] if path.exists()]
        for path in candidates[1:]:
            if not path.exists():
                break
            existing.append(path)
        if resume:
            if not existing:
                raise TunesmithError(f"--resume: no run named '{name}' under {root}; start without --resume")
            return cls(existing[-1])
        if existing and cls(existing[-1]).failed_start():
            return cls(existing[-1])
        path = next(path for path in candidates if not path.exists())
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def for_nodes(cls, config: Config, default_name: str, resume: bool) -> RunFolder:
        """The folder of a run spread over several machines: output.dir/name exactly, never name-2, since every
        node's launcher must arrive at the same folder without talking to the others (workers start only
        after all nodes have joined, so none has written into it yet)."""
        run = cls(Path(config.output.dir) / (config.output.name or default_name))
        if resume and not run.path.is_dir():
            raise TunesmithError(f"--resume: {run.path} does not exist on this node; start without --resume")
        if not resume and run.path.is_dir() and not run.failed_start():
            raise TunesmithError(
                f"output.name: {run.path} already holds a run; a multi-node run needs a folder of its own "
                "(every node must name the same one): set another output.name, or continue it with --resume"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    def failed_start(self) -> bool:
        """The folder of a start that stopped before training began: nothing in it is worth keeping."""
        trained = (self.summary, self.checkpoints, self.model_dir, self.metrics)
        return self.path.is_dir() and not any(path.exists() for path in trained)

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        run = cls(Path(path))
        if not run.config_file.exists():
            raise TunesmithError(
                f"{path}: not a tunesmith run folder (no config.yaml); pass the folder a `train` created"
            )
        return run

    def load_config(self) -> Config:
        return load_config(self.config_file)

    # Only rank 0 writes the run folder; other ranks' writes are no-ops.
    def save_config(self, config: Config) -> None:
        """config.yaml as the user wrote it (file paths made absolute): settings left unset stay unset, so a
        rerun or --nproc worker chooses the same defaults (what was chosen is in run.json: defaults)."""
        if is_main():
            dump_config(config, self.config_file)

    def write_json(self, path: Path, payload: dict) -> None:
        if not is_main():
            return
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        temporary.replace(path)

    def read_summary(self) -> RunSummary:
        return RunSummary.from_dict(json.loads(self.summary.read_text()) if self.summary.exists() else {})

    def finished_summary(self, verb: str) -> RunSummary:
        """run.json of a run that finished training; anything else is refused, naming what `verb` needs."""
        summary = self.read_summary()
        if summary.status != "finished":
            raise TunesmithError(
                f"{verb}: {self.path} has not finished training (status: {summary.status}); "
                "finish it, or continue it with `tunesmith train CONFIG --resume`"
            )
        return summary

    def update_summary(self, **changes) -> RunSummary:
        """Set fields of run.json (each must be a RunSummary field) and return the whole summary."""
        summary = replace(self.read_summary(), **changes)  # an undeclared field raises TypeError here
        self.write_json(self.summary, summary.to_dict())
        return summary

    def truncate_metrics_after(self, step: int) -> int:
        """Drop metric lines past `step` (work a resume will redo); return how many were dropped."""
        records = self.read_metrics()
        if not is_main():
            return 0
        kept = [r for r in records if r.get("step", 0) <= step]
        temporary = self.metrics.with_suffix(".tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        temporary.replace(self.metrics)
        return len(records) - len(kept)

    def read_metrics(self) -> list[dict]:
        return self.read_jsonl(self.metrics)

    @staticmethod
    def read_jsonl(path: Path) -> list[dict]:
        """One record per non-empty line (metrics.jsonl, samples.jsonl); none when the file is absent."""
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
