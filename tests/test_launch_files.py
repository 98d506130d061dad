"""`tunesmith launch --print`: each cluster file is parsed by the tool that reads it, and the accelerate one runs."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch.distributed.run import get_args_parser

from tunesmith import api
from tunesmith.cli import _parser
from tunesmith.errors import TunesmithError


@pytest.fixture
def config(make_config, tmp_path) -> Path:
    raw = make_config(
        rows=40,
        train={"max_steps": 4, "batch_size": 4, "eval_steps": 2, "save_steps": 2},
        eval={"samples": 0, "before_training": False},
    )
    raw["method"]["lora"]["dropout"] = 0.0
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_script_runs_torchrun_on_every_node_with_the_nodes_own_rank(config, tmp_path):
    script = api.launch(config, "slurm", 2, 8, "zero3", ["train.batch_size=16"])
    sbatch = [
        line[len("#SBATCH --") :].partition("=") for line in script.splitlines() if line.startswith("#SBATCH")
    ]
    directives = {key: value for key, _, value in sbatch}
    assert (directives["nodes"], directives["ntasks-per-node"], directives["gpus-per-node"]) == (
        "2",
        "1",
        "8",
    )
    # Run it with stand-ins for Slurm: srun starts the task as node 1 would, python prints what it was given.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "scontrol", 'printf "node-a\\nnode-b\\n"')
    stub(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done; SLURM_NODEID=1 exec "$@"')
    stub(bin_dir, "python", 'printf "%s\\n" "$TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE" "$@"')
    (tmp_path / "job.sh").write_text(script)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_ID": "42",
    }
    result = subprocess.run(
        ["bash", str(tmp_path / "job.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    prefix, module_flag, module, *arguments = result.stdout.splitlines()
    assert (prefix, module_flag, module) == ("[node1 rank${rank}]:", "-m", "torch.distributed.run")
    torchrun = get_args_parser().parse_args(arguments)
    assert (torchrun.nnodes, torchrun.node_rank, torchrun.nproc_per_node) == ("2", 1, "8")
    assert (torchrun.rdzv_backend, torchrun.rdzv_endpoint, torchrun.rdzv_id) == ("c10d", "node-a:29500", "42")
    assert torchrun.max_restarts == 3 and torchrun.module and torchrun.training_script == "tunesmith.cli"
    run_dir = tmp_path / "runs" / "cfg"
    assert torchrun.log_dir == f"{run_dir}/logs/node-1" and run_dir.is_dir()  # the script made the folder
    train = _parser().parse_args(torchrun.training_script_args)  # tunesmith's own parser reads the rest
    assert train.verb == "train" and train.config == str(config) and not train.resume
    assert train.overrides == ["train.batch_size=16", "train.distributed=deepspeed", "train.zero_stage=3"]
    (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # requeued after a checkpoint: resumes
    again = subprocess.run(
        ["bash", str(tmp_path / "job.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert (
        _parser()
        .parse_args(get_args_parser().parse_args(again.stdout.splitlines()[3:]).training_script_args)
        .resume
    )


def test_accelerate_config_is_read_by_accelerate_for_each_engine(config):
    from accelerate.commands.config.config_args import ClusterConfig

    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
    for engine, distributed_type in expected.items():
        text = api.launch(config, "accelerate", 2, 4, engine, ["train.batch_size=8"])
        path = config.parent / f"{engine}.yaml"
        path.write_text(text)
        read = ClusterConfig.from_yaml_file(path)
        assert (read.distributed_type, read.num_machines, read.num_processes) == (distributed_type, 2, 8)
        assert read.rdzv_backend == "c10d"
    assert read.deepspeed_config["zero_stage"] == 3 and read.deepspeed_config["zero3_save_16bit_model"]
    fsdp = ClusterConfig.from_yaml_file(config.parent / "fsdp.yaml").fsdp_config
    assert (fsdp["fsdp_version"], fsdp["fsdp_auto_wrap_policy"]) == (2, "TRANSFORMER_BASED_WRAP")


def test_skypilot_task_names_the_nodes_gpus_and_the_torchrun_line(config):
    task = yaml.safe_load(api.launch(config, "skypilot", 4, 8, "fsdp", ["train.batch_size=32"]))
    assert (task["num_nodes"], task["resources"]["accelerators"]) == (4, "H100:8")
    assert "--node-rank=$SKYPILOT_NODE_RANK" in task["run"] and "--nnodes=4" in task["run"]
    assert "train.distributed=fsdp" in task["run"]
    subprocess.run(["bash", "-n"], input=task["run"], text=True, check=True)  # valid shell


def test_a_batch_that_does_not_split_over_every_gpu_is_refused(config):
    with pytest.raises(TunesmithError, match="train.batch_size: 4 does not split evenly over 6 processes"):
        api.launch(config, "slurm", nodes=2, gpus_per_node=3)


def test_accelerate_config_on_one_node_trains_like_one_process(config, tmp_path):
    """The generated DDP config, run by `accelerate launch` (two workers, gloo on this CPU machine)."""
    (tmp_path / "accelerate.yaml").write_text(
        api.launch(config, "accelerate", nodes=1, gpus_per_node=2, engine="ddp")
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNESMITH_RUN_DIR": str(tmp_path / "runs" / "accelerate")}
    (tmp_path / "runs" / "accelerate").mkdir(parents=True)
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(tmp_path / "accelerate.yaml"),
    ]
    result = subprocess.run(
        [*launcher, "--machine_rank", "0", "-m", "tunesmith.cli", "train", str(config), "--set", "train.distributed=ddp"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "accelerate" / "run.json").read_text())
    assert (summary["processes"], summary["status"]) == (2, "finished")
    single = api.train(config, ["output.name=single"])

    def losses(run):
        lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}

    launched, alone = losses(tmp_path / "runs" / "accelerate"), losses(single["run_dir"])
    assert sorted(launched) == [1, 2, 3, 4]
    for step in alone:
        assert abs(alone[step] - launched[step]) < 1e-4, (step, alone, launched)
