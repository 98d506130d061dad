"""`tunesmith plan`'s probes: a rung's config cut to a few steps, run in a process of its own and timed from
outside, with what it measured cached per config, rung, length, data and host (a second plan probes nothing).

A whole-run rung (features) is its own probe; it also labels its validation split through `predict`, example by
example, so that the planner can compare two lengths on the same examples.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from tunesmith.config import config_from_dict, read_yaml, set_key
from tunesmith.errors import TunesmithError
from tunesmith.registry import get_task
from tunesmith.run_folder import STARTED_AT_ENV
from tunesmith.tasks.base import Rung

PROBE_STEPS = 8  # optimizer steps a probe times (the first ones carry one-off costs; more cost more planning)
# The least a probe takes when none was measured here yet: a training process of its own that imports torch and
# transformers, loads the model, steps and writes its report (the tiny test models: 12-15 s on the 2-core AVX2
# host; MiniLM on BBC 36 s and up). Once a probe of the model ran on this host, its fastest is the floor.
PROBE_FLOOR_SECONDS = 12.0


@dataclass
class Measurement:
    """What a probe measured for one (rung, max_length) on this machine."""

    seconds_per_step: float  # a training step (evaluations and checkpoint writes left out)
    evaluation_seconds: float  # one evaluation of the validation split
    overhead_seconds: float  # the rest of the command: imports, loading, data, samples, writing, the report
    peak_memory_mb: float
    whole_run_seconds: float | None = None  # rungs without steps (features): the run itself
    cached_seconds: float = 0.0  # of which work the planned run finds cached (features' embeddings)
    validation_score: float | None = None  # a whole-run probe's validation macro-F1 (or accuracy)
    # a whole-run probe's validation split, example by example: {"expected": [...], "predicted": [...]} labels
    validation_answers: dict | None = None
    probe_seconds: float = 0.0  # what the probe cost planning: its whole process, answers included
    tested: bool = False  # the probe held out and scored the run's own test split: its pass is in the times
    cached: bool = False


def host_description() -> str:
    import torch

    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""  # noqa: SIM115
    model_line = next((line for line in flags.splitlines() if line.startswith("model name")), "")
    cpu = model_line.split(":", 1)[-1].strip() or platform.processor() or platform.machine()
    bf16 = "avx512_bf16" if "avx512_bf16" in flags else ("avx2" if "avx2" in flags else "no avx2")
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    # The threads too: a probe run with one thread (OMP_NUM_THREADS=1, or a busy host's setting) does not
    # predict a run with two, so it is never reused for one.
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, {threads} threads, {bf16}, torch {torch.__version__}{gpu}"


def probe_config(raw: dict, rung: Rung, max_length: int, folder: Path, steps: int) -> dict:
    """The rung's config cut to a probe: `steps` steps, one evaluation at the end, no early stop, no budget."""
    probe = apply_rung(raw, rung, max_length)
    for key, value in {
        "train.max_steps": steps,
        "train.eval_steps": steps,
        "train.save_steps": steps,
        "train.early_stopping_patience": None,
        "train.time_budget": None,
        "train.compile": False,
        "train.report_to": [],
        "eval.before_training": False,
        "output.dir": str(folder),
        "output.name": "probe",
    }.items():
        set_key(probe, key.split("."), value, "plan")
    if probe.get("data", {}).get("test_file"):  # a test file is apart from the training rows: left out, the
        # sizing adds its evaluation back from the validation one
        set_key(probe, ["data", "test_file"], None, "plan")
        set_key(probe, ["data", "test_ratio"], 0.0, "plan")
    # A test split held out of train_file stays held out, so the probe trains and validates on the run's own
    # rows (a validation score that chooses must never see a test example); its one test pass is timed with it.
    probe.pop("plan", None)
    probe.pop("sweep", None)
    return probe


def apply_rung(raw: dict, rung: Rung, max_length: int) -> dict:
    planned = copy.deepcopy(raw)
    for key, value in rung.settings.items():
        set_key(planned, key.split("."), value, "plan")
    set_key(planned, ["data", "max_length"], max_length, "plan")
    return planned


class ProbeOutOfTime(Exception):
    """A probe stopped because planning's share of the budget ran out."""


# The probe's process, a script on the public API as a user would write it (so this floor imports no API): train
# as `tunesmith train` does, its clock from the process's start; then, for a whole run (features), label the
# validation split example by example through `predict`, for the paired comparison of lengths.
PROBE_PROCESS = f"""
import json, os, sys, time
import psutil
os.environ.setdefault("{STARTED_AT_ENV}", str(psutil.Process().create_time()))
from tunesmith import api
from tunesmith.commands.plan_probes import read_answers, write_validation_inputs
config_file, ended_file = sys.argv[1:3]
summary = api.train(config_file)
trained_at = time.time()
answers = None
table = None if summary.get("global_step") else write_validation_inputs(config_file, summary["run_dir"])
if table is not None:
    inputs, expected = table
    api.predict(summary["run_dir"], inputs, inputs.with_name("validation-answers.jsonl"))
    answers = read_answers(inputs.with_name("validation-answers.jsonl"), expected)
with open(ended_file, "w") as handle:
    json.dump({{"trained_at": trained_at, "answers": answers}}, handle)
"""


def run_probe(
    raw: dict, rung: Rung, max_length: int, steps: int, timeout: float | None = None
) -> Measurement:
    """Train the rung for `steps` steps in a process of its own and read what it measured; stopped (ProbeOutOfTime)
    after `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-probe-") as folder:
        config_file = Path(folder) / "probe.yaml"
        config_file.write_text(yaml.safe_dump(probe_config(raw, rung, max_length, Path(folder), steps)))
        ended_file = Path(folder) / "ended.json"
        started = time.time()
        try:
            done = subprocess.run(
                [sys.executable, "-c", PROBE_PROCESS, str(config_file), str(ended_file)],
                capture_output=True,
                text=True,
                env={k: v for k, v in os.environ.items() if k != STARTED_AT_ENV},
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:  # the child is killed
            raise ProbeOutOfTime(f"{rung.label} at max_length {max_length}") from None
        probe_seconds = time.time() - started
        summary_file = Path(folder) / "probe" / "run.json"
        if done.returncode != 0 or not summary_file.exists() or not ended_file.exists():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise TunesmithError(f"plan: the probe of {rung.label} failed: {last[0]}")
        summary = json.loads(summary_file.read_text())
        ended = json.loads(ended_file.read_text())
        metrics = [json.loads(line) for line in (Path(folder) / "probe" / "metrics.jsonl").open()]
    # the whole `tunesmith train` command, as a planned run is timed: imports to report (not the answers after it)
    wall = ended["trained_at"] - started
    evaluations = [m["eval_runtime"] for m in metrics if "eval_runtime" in m]
    evaluation = max(evaluations) if evaluations else 0.0
    if not summary.get("global_step"):  # a fitting step (features): the probe was the whole run
        cached = summary.get("train_seconds") or 0.0  # the embeddings: cached, the planned run reuses them
        scores = summary.get("validation") or {}
        score = scores.get("f1_macro", scores.get("accuracy"))
        return Measurement(
            0.0,
            evaluation,
            wall,
            summary["peak_memory_mb"],
            wall,
            cached,
            score,
            ended.get("answers"),
            probe_seconds,
            tested=bool(summary.get("test")),
        )
    train = summary["train_seconds"]
    return Measurement(
        seconds_per_step=train / summary["global_step"],
        evaluation_seconds=evaluation,
        overhead_seconds=max(0.0, wall - train - sum(evaluations)),
        peak_memory_mb=summary["peak_memory_mb"],
        probe_seconds=probe_seconds,
        tested=bool(summary.get("test")),
    )


def write_validation_inputs(config_file: str, run_dir: str) -> tuple[Path, list[str]] | None:
    """The run's validation split as a table `predict` reads, and each example's label; None where the task has
    no such table (Task.prediction_inputs: single-label text classification only)."""
    cfg = config_from_dict(read_yaml(Path(config_file)))
    task = get_task(cfg.task)
    table = task.prediction_inputs(cfg, task.validated_data(cfg).validation)  # the split the run made
    if table is None:
        return None
    rows, expected = table
    inputs = Path(run_dir) / "validation-inputs.jsonl"
    inputs.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return inputs, expected


def read_answers(output: Path, expected: list[str]) -> dict:
    predicted = [json.loads(line)["label"] for line in output.open(encoding="utf-8")]
    return {"expected": expected, "predicted": predicted}


def file_digest(path: Path) -> str:
    """The data's content (a folder: its files' names, sizes and times), so a rewritten copy still hits."""
    if path.is_dir():
        listing = sorted(
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime) for p in path.rglob("*")
        )
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ProbeCache:
    """Measurements per (model, task, rung, max_length, batch, data, host): a second plan runs no probe."""

    def __init__(self, path: Path):
        self.path = path
        self.entries = json.loads(path.read_text()) if path.exists() else {}

    @staticmethod
    def key(raw: dict, rung: Rung, max_length: int) -> str:
        return ProbeCache._digest([raw, rung.settings, max_length, PROBE_STEPS])

    @staticmethod
    def _digest(parts: list) -> str:
        data = parts[0].get("data", {})
        files = [data.get(k) for k in ("train_file", "validation_file", "test_file")]
        stamps = [file_digest(Path(f)) for f in files if f and Path(f).exists()]
        whole = [*parts, stamps, host_description()]
        return hashlib.sha256(json.dumps(whole, sort_keys=True, default=str).encode()).hexdigest()[:20]

    @staticmethod
    def plan_key(raw: dict) -> str:
        """The config, data and host a plan's probes were measured for (all its rungs and lengths)."""
        return ProbeCache._digest([raw])

    def get(self, key: str) -> Measurement | None:
        entry = self.entries.get(key)
        if not entry or (entry.get("whole_run_seconds") is not None and "validation_answers" not in entry):
            return None  # none, or a whole-run probe from before its answers were kept
        fields = {k: v for k, v in entry.items() if k in Measurement.__dataclass_fields__}
        return Measurement(**{**fields, "cached": True})

    def put(self, key: str, measurement: Measurement, plan_key: str, model: str) -> None:
        entry = {k: v for k, v in asdict(measurement).items() if k != "cached"}
        self.entries[key] = {**entry, "plan": plan_key, "model": model, "host": host_description()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.entries, indent=1))

    def holds_plan(self, plan_key: str) -> bool:
        return any(entry.get("plan") == plan_key for entry in self.entries.values())

    def fastest_probe(self, model: str) -> float | None:
        """The quickest probe of this model measured on this host (a floor for the next one's cost)."""
        host = host_description()
        seconds = [
            e["probe_seconds"]
            for e in self.entries.values()
            if e.get("model") == model and e.get("host") == host and e.get("probe_seconds")
        ]
        return min(seconds, default=None)
