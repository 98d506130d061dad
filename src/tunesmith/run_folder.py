"""A run is a folder that explains itself: config, data report, metrics, checkpoints, model, summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith.config import Config, dump_config, load_config
from tunesmith.console import is_main
from tunesmith.errors import TunesmithError


def free_path(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... (before the suffix) that does not exist: nothing is overwritten."""
    candidates = [path] + [path.with_name(f"{path.stem}-{n}{path.suffix}") for n in range(2, 10_000)]
    return next(candidate for candidate in candidates if not candidate.exists())


RUN_DIR_ENV = "TUNESMITH_RUN_DIR"  # set by the launcher so every rank uses the folder it created


class RunFolder:
    def __init__(self, path: Path):
        self.path = path

    config_file = property(lambda self: self.path / "config.yaml")
    data_report = property(lambda self: self.path / "data_report.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "run.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    model_dir = property(lambda self: self.path / "model")
    samples = property(lambda self: self.path / "samples.jsonl")

    @classmethod
    def for_training(cls, config: Config, default_name: str, resume: bool) -> RunFolder:
        """A new folder (name, name-2, name-3, ...: an earlier run is never reused), or with resume the latest."""
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
        path = next(path for path in candidates if not path.exists())
        path.mkdir(parents=True)
        return cls(path)

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
        if is_main():
            dump_config(config, self.config_file)

    def write_json(self, path: Path, payload: dict) -> None:
        if not is_main():
            return
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        temporary.replace(path)

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text()) if self.summary.exists() else {}

    def finished_summary(self, verb: str) -> dict:
        """run.json of a run that finished training; anything else is refused, naming what `verb` needs."""
        summary = self.read_summary()
        if summary.get("status") != "finished":
            raise TunesmithError(
                f"{verb}: {self.path} has not finished training (status: {summary.get('status', 'unknown')}); "
                "finish it, or continue it with `tunesmith train CONFIG --resume`"
            )
        return summary

    def update_summary(self, **fields) -> dict:
        summary = {**self.read_summary(), **fields}
        self.write_json(self.summary, summary)
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
