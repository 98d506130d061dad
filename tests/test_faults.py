"""Runs that survive faults: SIGKILL mid-checkpoint, corrupted checkpoints, SIGTERM, unsafe inputs, leaked secrets."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.training.checkpoints import verify


def write_config(make_config, tmp_path, **train) -> Path:
    raw = make_config(
        rows=40,
        train={"max_steps": 8, "save_steps": 2, "eval_steps": 2, "save_total_limit": 3, **train},
        eval={"samples": 0, "before_training": False},
    )
    raw["data"]["validation_ratio"] = 0  # final weights are the last step's, not a best checkpoint's
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def tunesmith(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,  # a two-process run restarted once takes minutes on a 2-core host beside another test worker
        **kwargs,
    )


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "adapter_model.safetensors")


def test_sigkill_during_checkpoint_write_then_resume_gives_identical_weights(make_config, tmp_path):
    config = write_config(make_config, tmp_path)
    whole = tunesmith("train", str(config), "--set", "output.name=whole")
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed = tunesmith(
        "train",
        str(config),
        "--set",
        "output.name=split",
        env={"TUNESMITH_FAULT": "during_checkpoint_write:6"},
    )
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "runs" / "split" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (
        checkpoints / ".partial" / "checkpoint-6"
    ).exists()  # the half-written one never got its final name

    resumed = tunesmith("train", str(config), "--set", "output.name=split", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from checkpoint-4" in resumed.stdout
    first, second = adapter(tmp_path / "runs" / "whole"), adapter(tmp_path / "runs" / "split")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name  # bit-identical on CPU
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "runs" / "split" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [s for s in steps if s <= 8]
    assert (
        sorted(set(losses)) == list(range(1, 9)) and len(losses) == len(set(losses)) + 1
    )  # +1: the end-of-run summary


def test_truncated_checkpoint_is_skipped_for_the_previous_one(make_config, tmp_path, capsys):
    config = write_config(make_config, tmp_path)
    summary = api.train(config)
    newest = Path(summary["run_dir"]) / "checkpoints" / "checkpoint-8"
    weights = newest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "adapter_model.safetensors has 100 bytes" in verify(newest)
    resumed = api.train(config, resume=True)
    out = capsys.readouterr().out
    assert "checkpoint-8: adapter_model.safetensors has 100 bytes" in out and "skipped" in out
    assert "resuming from checkpoint-6" in out
    assert resumed["status"] == "finished" and resumed["global_step"] == 8


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(make_config, tmp_path):
    config = write_config(make_config, tmp_path, max_steps=100000, save_steps=100000, eval_steps=100000)
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "runs" / "cfg" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert "SIGTERM: saving a checkpoint" in stdout and "continue with --resume" in stdout
    summary = json.loads((tmp_path / "runs" / "cfg" / "run.json").read_text())
    assert summary["status"] == "stopped"
    checkpoint = tmp_path / "runs" / "cfg" / "checkpoints" / f"checkpoint-{summary['global_step']}"
    assert verify(checkpoint) is None


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_model, make_config):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_model / name).read_bytes())
    raw = make_config(rows=12, train={"max_steps": 1}, eval={"samples": 0, "before_training": False})
    raw["model"]["name"] = str(folder)
    with pytest.raises(
        TunesmithError, match=r"holds only pickle weights \(pytorch_model.bin\).*--allow-pickle"
    ):
        api.train(config_from_dict(raw))
    raw["model"]["allow_pickle"] = True
    assert api.train(config_from_dict(raw))["status"] == "finished"


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
def test_run_names_cannot_escape_the_output_folder(make_config, name):
    raw = make_config(rows=4)
    raw["output"]["name"] = name
    with pytest.raises(TunesmithError, match="output.name: must be a plain folder name"):
        config_from_dict(raw)


def test_secrets_never_reach_the_run_folder(make_config, tmp_path, monkeypatch):
    secret = "hf_PLANTEDsecret0123456789"
    for name in ("HF_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.setenv(name, secret)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    raw = make_config(
        rows=16, train={"max_steps": 2, "report_to": ["tensorboard", "wandb"]}, eval={"samples": 1}
    )
    run = Path(api.train(config_from_dict(raw))["run_dir"])
    leaked = [p for p in run.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    assert len(list(run.rglob("*"))) > 10  # the scan looked at a real run folder


def test_checkpoints_are_fsynced_before_the_rename_and_rotated_after(make_config, tmp_path, monkeypatch):
    """Every file and folder of a checkpoint reaches the disk before its final name; older ones go after."""
    import shutil

    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rmtree = os.fsync, os.replace, shutil.rmtree

    def fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        return real_fsync(descriptor)

    def replace(source, target, **kwargs):
        events.append(("rename", f"{source} -> {target}"))
        return real_replace(source, target, **kwargs)

    def rmtree(path, *args, **kwargs):
        events.append(("delete", str(path)))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    config = write_config(make_config, tmp_path, max_steps=4, save_total_limit=1)
    summary = api.train(config)
    root = (Path(summary["run_dir"]) / "checkpoints").resolve()
    staged, final = root / ".partial" / "checkpoint-4", root / "checkpoint-4"
    commit = events.index(("rename", f"{staged} -> {final}"))
    synced = {path for kind, path in events[:commit] if kind == "fsync"}
    files = {str(p).replace(str(final), str(staged)) for p in final.rglob("*") if p.is_file()}
    assert "manifest.json" in {Path(p).name for p in files} and len(files) > 5
    assert files <= synced, files - synced  # every file the checkpoint holds, manifest included
    assert str(staged) in synced  # and the folder's entries
    after = events[commit + 1 :]
    assert after.index(("fsync", str(root))) < after.index(("delete", str(root / "checkpoint-2")))
    assert sorted(p.name for p in root.glob("checkpoint-*")) == ["checkpoint-4"]  # rotation did happen


def test_elastic_restart_after_a_killed_worker_ends_with_the_uninterrupted_weights(make_config, tmp_path):
    """--max-restarts: torchrun restarts both workers after one is SIGKILLed at step 5; they resume from
    checkpoint-4 and end bit-identical to a run that was never interrupted."""
    config = write_config(make_config, tmp_path, batch_size=4)
    gloo = {"OMP_NUM_THREADS": "1"}
    whole = tunesmith("train", str(config), "--nproc", "2", "--set", "output.name=whole", env=gloo)
    assert whole.returncode == 0, whole.stderr[-2000:]
    restarted = tunesmith(
        "train", str(config), "--nproc", "2", "--max-restarts", "1", "--set", "output.name=elastic",
        env={**gloo, "TUNESMITH_FAULT": "kill_worker:5"},
    )  # fmt: skip
    assert restarted.returncode == 0, restarted.stdout[-2000:] + restarted.stderr[-3000:]
    assert "failed (exitcode: -9) local_rank: 1" in restarted.stderr, restarted.stderr[-3000:]  # SIGKILL
    assert "restart 1 after a worker died: continuing from the last checkpoint" in restarted.stdout
    assert "resuming from checkpoint-4" in restarted.stdout
    first, second = adapter(tmp_path / "runs" / "whole"), adapter(tmp_path / "runs" / "elastic")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    summary = json.loads((tmp_path / "runs" / "elastic" / "run.json").read_text())
    assert (summary["status"], summary["restarts"], summary["global_step"]) == ("finished", 1, 8)
    logged = [
        json.loads(line)
        for line in (tmp_path / "runs" / "elastic" / "metrics.jsonl").read_text().splitlines()
    ]
    assert sorted(r["step"] for r in logged if "loss" in r) == list(range(1, 9))  # step 5 once, not twice


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="`make setup` installs ray")
def test_ray_restart_after_a_killed_worker_resumes_to_the_uninterrupted_weights(make_config, tmp_path):
    """train.launcher: ray: Ray Train's TorchTrainer starts the two workers (gloo) and restarts them after rank 1 is
    SIGKILLed at step 5; they resume from checkpoint-4 and end bit-identical to torchrun's uninterrupted run (so Ray
    runs the same recipe: the test that only trained under Ray was folded into this one)."""
    config = write_config(make_config, tmp_path, batch_size=4)
    gloo = {"OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    whole = tunesmith("train", str(config), "--nproc", "2", "--set", "output.name=whole", env=gloo)
    assert whole.returncode == 0, whole.stderr[-2000:]
    restarted = tunesmith(
        "train", str(config), "--nproc", "2", "--max-restarts", "1", "--set", "output.name=ray",
        "--set", "train.launcher=ray", env={**gloo, "TUNESMITH_FAULT": "kill_worker:5"},
    )  # fmt: skip
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    assert "resuming from checkpoint-4" in restarted.stdout + restarted.stderr
    first, second = adapter(tmp_path / "runs" / "whole"), adapter(tmp_path / "runs" / "ray")
    for name in first:
        assert torch.equal(first[name], second[name]), name
    summary = json.loads((tmp_path / "runs" / "ray" / "run.json").read_text())
    assert (summary["status"], summary["restarts"], summary["processes"]) == ("finished", 1, 2)
    logged = [
        json.loads(line) for line in (tmp_path / "runs" / "ray" / "metrics.jsonl").read_text().splitlines()
    ]
    assert sorted(r["step"] for r in logged if "loss" in r) == list(range(1, 9))  # step 5 once, not twice
