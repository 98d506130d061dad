"""A run is a folder that explains itself: config, data report, metrics, checkpoints, model, summary."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config import Config, dump_config, load_config
from tunesmith.errors import TunesmithError


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

    def save_config(self, config: Config) -> None:
        dump_config(config, self.config_file)

    def write_json(self, path: Path, payload: dict) -> None:
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        temporary.replace(path)

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text()) if self.summary.exists() else {}

    def update_summary(self, **fields) -> dict:
        summary = {**self.read_summary(), **fields}
        self.write_json(self.summary, summary)
        return summary

    def latest_checkpoint(self) -> Path | None:
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
