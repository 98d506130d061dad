"""Data-parallel training on CPU with gloo: two processes (DDP or FSDP) follow the same loss curve as one."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml


def train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_two_processes_match_one_at_the_same_global_batch(make_config, tmp_path):
    raw = make_config(
        rows=40,
        train={"max_steps": 6, "batch_size": 4, "eval_steps": 3, "save_steps": 3},
        eval={"samples": 1, "before_training": True},
    )
    raw["method"]["lora"]["dropout"] = 0.0  # dropout draws differ per rank; the rest is deterministic
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, nproc, engine in (("one", 1, "ddp"), ("two", 2, "ddp"), ("fsdp", 2, "fsdp")):
        command = [sys.executable, "-m", "tunesmith.cli", "train", str(config), "--nproc", str(nproc)]
        command += ["--set", f"output.name={name}", "--set", f"train.distributed={engine}"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert result.stdout.count("run: ") == 1, result.stdout  # one final line, not one per rank
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    single, double = train_losses(one), train_losses(two)
    assert sorted(double) == list(range(1, 7))
    for step in single:
        assert abs(single[step] - double[step]) < 1e-4, (step, single[step], double[step])
    summary = json.loads((two / "run.json").read_text())
    assert summary["processes"] == 2 and summary["status"] == "finished"
    assert (
        abs(
            summary["validation_loss_after"]
            - json.loads((one / "run.json").read_text())["validation_loss_after"]
        )
        < 1e-4
    )
    # rank 0 alone wrote the folder: one run, one metrics line per step, one samples file
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fsdp", "one", "two"]
    assert len([line for line in (two / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]) == 6
    assert len((two / "samples.jsonl").read_text().splitlines()) == 1
    fsdp = train_losses(tmp_path / "runs" / "fsdp")  # FSDP (sharded) on gloo follows the same curve
    for step in single:
        assert abs(single[step] - fsdp[step]) < 1e-4, (step, single[step], fsdp[step])


def test_missing_engine_is_refused_before_workers_start(make_config, tmp_path, capsys, monkeypatch):
    import importlib.util

    from tunesmith.cli import main
    from tunesmith.training import distributed

    # Where deepspeed is installed the check would pass: hide it, so the refusal is tested on every machine.
    real_find_spec = importlib.util.find_spec
    hidden = lambda name, *args: None if name == "deepspeed" else real_find_spec(name, *args)  # noqa: E731
    monkeypatch.setattr(distributed.importlib.util, "find_spec", hidden)
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda *args: launched.append(args))
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(make_config(rows=8)))
    assert main(["train", str(config), "--nproc", "2", "--set", "train.distributed=deepspeed"]) == 2
    assert "train.distributed: deepspeed is not installed" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and launched == []


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def distributed_config(make_config, tmp_path) -> Path:
    raw = make_config(
        rows=40,
        train={"max_steps": 6, "batch_size": 4, "eval_steps": 3, "save_steps": 3},
        eval={"samples": 0, "before_training": False},
    )
    raw["method"]["lora"]["dropout"] = 0.0  # dropout draws differ per rank; the rest is deterministic
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def test_two_nodes_on_one_machine_match_two_processes_on_one_node(make_config, tmp_path):
    config = distributed_config(make_config, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "tunesmith.cli", "train", str(config)]
    single = subprocess.run(
        [*train, "--nproc", "2", "--set", "output.name=one-node"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [*train, "--set", "output.name=two-nodes", "--nnodes", "2", "--node-rank", str(rank)]
            + ["--master-addr", "127.0.0.1", "--master-port", port, "--nproc", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stdout[-2000:] + stderr[-3000:]
    one, two = tmp_path / "runs" / "one-node", tmp_path / "runs" / "two-nodes"
    single_losses, node_losses = train_losses(one), train_losses(two)
    assert sorted(node_losses) == list(range(1, 7))
    for step in single_losses:
        assert abs(single_losses[step] - node_losses[step]) < 1e-4, (step, single_losses, node_losses)
    summary = json.loads((two / "run.json").read_text())
    assert (summary["processes"], summary["nodes"], summary["status"]) == (2, 2, "finished")
    # one checkpoint folder, written once, readable by both nodes; every worker line says where it came from
    assert sorted(p.name for p in (two / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-6",
    ]
    printed = "".join(stdout for stdout, _ in outputs)
    assert "rank0]:run folder: " in printed and printed.count("run folder: ") == 1, printed[-3000:]
    assert sorted(p.name for p in (two / "logs").iterdir()) == ["node-0", "node-1"]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="`make setup` installs deepspeed")
def test_deepspeed_zero2_and_zero3_on_two_cpu_processes_follow_one_process(make_config, tmp_path):
    """DeepSpeed's CPU accelerator (gloo underneath, its shm all-reduce built on first use with g++)."""
    from safetensors.torch import load_file

    from tunesmith import api

    config = distributed_config(make_config, tmp_path)
    alone = api.train(config, ["output.name=alone"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for stage in (2, 3):
        command = [sys.executable, "-m", "tunesmith.cli", "train", str(config), "--nproc", "2"]
        command += ["--set", f"output.name=zero{stage}", "--set", "train.distributed=deepspeed"]
        result = subprocess.run(
            [*command, "--set", f"train.zero_stage={stage}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        run = tmp_path / "runs" / f"zero{stage}"
        single, sharded = train_losses(Path(alone["run_dir"])), train_losses(run)
        assert sorted(sharded) == list(range(1, 7))
        for step in single:
            assert abs(single[step] - sharded[step]) < 1e-4, (stage, step, single, sharded)
        # ZeRO-3 shards the weights: the saved adapter must still hold whole tensors, equal to one process's
        expected = load_file(Path(alone["run_dir"]) / "model" / "adapter_model.safetensors")
        saved = load_file(run / "model" / "adapter_model.safetensors")
        assert saved.keys() == expected.keys()
        for name in expected:
            assert saved[name].shape == expected[name].shape, (stage, name)
            assert torch.allclose(saved[name], expected[name], atol=1e-5), (stage, name)


def test_a_multi_node_run_names_one_folder_and_refuses_one_that_holds_a_run(make_config, tmp_path):
    from tunesmith.config import config_from_dict
    from tunesmith.errors import TunesmithError
    from tunesmith.run_folder import RunFolder
    from tunesmith.training.distributed import Cluster

    cfg = config_from_dict(make_config(rows=8))
    first = RunFolder.for_nodes(cfg, "cfg", resume=False)
    assert (
        first.path == tmp_path / "runs" / "cfg" and RunFolder.for_nodes(cfg, "cfg", False).path == first.path
    )
    first.metrics.write_text(
        '{"step": 1, "loss": 1.0}\n'
    )  # it trained: a fresh multi-node start must not reuse it
    with pytest.raises(TunesmithError, match="already holds a run.*--resume"):
        RunFolder.for_nodes(cfg, "cfg", resume=False)
    assert RunFolder.for_nodes(cfg, "cfg", resume=True).path == first.path
    with pytest.raises(TunesmithError, match="--node-rank: 2 is outside 0..1"):
        Cluster(nodes=2, node_rank=2).check()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU only: DeepSpeed on NCCL")
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="`make setup` installs deepspeed")
def test_deepspeed_on_gpus_follows_ddp(make_config, tmp_path):
    """The GPU check for a lent device: ZeRO-2/3 on NCCL (one process per GPU, at most two) against DDP, fp32."""
    config = distributed_config(make_config, tmp_path)
    processes = str(min(2, torch.cuda.device_count()))
    losses = {}
    for name, engine in (("ddp", ["ddp"]), ("zero2", ["deepspeed", "2"]), ("zero3", ["deepspeed", "3"])):
        command = [sys.executable, "-m", "tunesmith.cli", "train", str(config), "--nproc", processes]
        command += ["--set", f"output.name={name}", "--set", f"train.distributed={engine[0]}"]
        command += ["--set", f"train.zero_stage={engine[1]}"] if len(engine) > 1 else []
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        losses[name] = train_losses(tmp_path / "runs" / name)
    for name in ("zero2", "zero3"):
        assert sorted(losses[name]) == list(range(1, 7))
        for step, loss in losses["ddp"].items():
            assert abs(loss - losses[name][step]) < 1e-3, (
                name,
                step,
                losses,
            )  # TF32/NCCL order: looser than CPU


def test_a_node_that_cannot_see_the_run_folder_says_so(tmp_path, monkeypatch):
    from tunesmith import api
    from tunesmith.errors import TunesmithError

    unseen = tmp_path / "runs" / "elsewhere"  # node 0 wrote config.yaml here, on storage this node lacks
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("TUNESMITH_RUN_DIR", str(unseen))
    with pytest.raises(
        TunesmithError, match="this node cannot see it .*output.dir must be on storage every node mounts"
    ):
        api.train(str(unseen / "config.yaml"))
