"""Where every bench and demo figure goes: bench/results/<name>.json, beside what it was measured under.

A figure without its host is not a figure: the project's machines differ (AVX2 only, or AVX-512 BF16, where bf16
runs ~100x faster) and are shared (a figure taken under another job's load measures that job too). So each results
file carries a `meta` block: the date, the command, the host (CPU model, the flags that decide precision, cores,
torch threads, GPU), the load average when the measurement began and when it was written, the wall time, and the
library versions. The README and docs quote these files (tests/test_figures.py checks the quotes).

    provenance = Provenance.begin()      # at the start: the date, the command and the load before
    ...measure...
    write_results("name", {"rows": rows}, provenance)   # bench/results/name.json = {"meta": ..., "rows": ...}
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# The flags that decide tunesmith's precision and speed on a CPU (tunesmith.training.hardware.cpu_has_fast_bf16).
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
VERSIONED = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "trl",
    "scikit-learn",
    "bitsandbytes",
    "tunesmith",
)


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (the platform's name and no flags elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages: how busy the shared cores were."""
    return [round(x, 2) for x in os.getloadavg()]


def host() -> dict:
    import torch

    model, flags = cpu_info()
    return {
        "cpu": model,
        "flags": [flag for flag in FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def versions(names: tuple[str, ...] = VERSIONED) -> dict:
    """Installed versions of the libraries the figures depend on ("not installed" where one is absent)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


@dataclass(frozen=True)
class Provenance:
    """When and how a measurement began; `meta()` adds what holds when its figures are written."""

    started: float
    command: str
    load_average_before: list[float]

    @classmethod
    def begin(cls, command: list[str] | None = None) -> Provenance:
        argv = command if command is not None else [Path(sys.executable).name, *sys.argv]
        return cls(time.time(), shlex.join(argv), load_average())

    def meta(self) -> dict:
        return {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.started)),
            "command": self.command,
            "host": host(),
            "load_average_before": self.load_average_before,
            "load_average_after": load_average(),
            "wall_seconds": round(time.time() - self.started, 1),
            "versions": versions(),
        }


def write_results(name: str, figures: dict, provenance: Provenance, folder: Path = RESULTS) -> Path:
    """Write bench/results/<name>.json: {"meta": ..., **figures}. Called again as a bench goes, it rewrites the
    file, so a run cut short keeps what it finished."""
    if "meta" in figures:
        raise ValueError("figures must not carry their own 'meta': it is the provenance block")
    path = folder / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": provenance.meta(), **figures}, indent=2) + "\n", encoding="utf-8")
    return path


def describe(meta: dict) -> str:
    """One line for a markdown table's header: the date, command, host and load the figures were taken under."""
    h = meta["host"]
    return (
        f"{meta['date']}, `{meta['command']}`; host: {h['cpu']}, {h['cores']} cores, {h['torch_threads']} torch "
        f"threads, flags {' '.join(h['flags']) or 'none of ' + ' '.join(FLAGS)}"
        + (f", GPU {h['cuda']}" if h.get("cuda") else "")
        + f"; load average {meta['load_average_before']} before, {meta['load_average_after']} after; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    )


def train_quickstart_cell(
    config: Path, name: str, steps: int, overrides: dict, env: dict | None = None
) -> tuple[dict, float]:
    """One bench cell: `tunesmith train` of the quickstart in its own process, `steps` steps with evaluations, samples,
    the reference check and the test split off, plus `overrides` (and `env` added to the process's environment); the
    run's run.json and the command's seconds."""
    settings = {
        "train.max_steps": steps,
        "train.eval_steps": 10_000,
        "eval.before_training": "false",
        "eval.samples": 0,
        "eval.reference": "null",
        "data.test_file": "null",
        "output.name": name,
        **overrides,
    }
    command = [sys.executable, "-m", "tunesmith.cli", "train", str(config)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    subprocess.run(
        command, cwd=config.parent, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    wall = time.perf_counter() - started
    return json.loads((config.parent / "runs" / name / "run.json").read_text()), round(wall, 1)
