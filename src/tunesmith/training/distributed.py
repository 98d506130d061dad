"""Multi-process training: `--nproc N` (and `--nnodes`) relaunches the same run under torchrun; rank 0 alone writes
the run folder; `--max-restarts` lets torchrun restart a group whose worker died, and the run resumes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tunesmith.console import world_size
from tunesmith.errors import TunesmithError
from tunesmith.run_folder import RUN_DIR_ENV

RESTART_COUNT_ENV = (
    "TORCHELASTIC_RESTART_COUNT"  # torchrun sets it in every worker: 0, then 1, 2 ... per restart
)
LOG_PREFIX_ENV = "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"


@dataclass(frozen=True)
class Cluster:
    """Where this launch sits: `processes` per node on `nodes` machines meeting at master_addr:master_port
    (c10d rendezvous), and how many times torchrun may restart the group after a worker dies."""

    processes: int = 1
    nodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    max_restarts: int = 0

    @property
    def world(self) -> int:
        return self.processes * self.nodes

    @property
    def launches(self) -> bool:
        """Whether `tunesmith train` starts workers through torchrun instead of training in this process."""
        return self.world > 1 or self.max_restarts > 0

    def check(self) -> None:
        for key, value, least in (("--nproc", self.processes, 1), ("--nnodes", self.nodes, 1)):
            if value < least:
                raise TunesmithError(f"{key}: {value} is not a count; use {least} or more")
        if not 0 <= self.node_rank < self.nodes:
            raise TunesmithError(
                f"--node-rank: {self.node_rank} is outside 0..{self.nodes - 1} for --nnodes {self.nodes}"
            )
        if self.max_restarts < 0:
            raise TunesmithError(f"--max-restarts: {self.max_restarts}; use 0 (no restart) or more")


def per_device_batch(global_batch: int) -> int:
    """train.batch_size is the global micro-batch, so one config gives the same steps with any process count."""
    return per_device_batch_for(global_batch, world_size())


def per_device_batch_for(global_batch: int, processes: int) -> int:
    if global_batch % processes:
        raise TunesmithError(
            f"train.batch_size: {global_batch} does not split evenly over {processes} processes; use a multiple of {processes}"
        )
    return global_batch // processes


def check_engine(engine: str) -> None:
    """Refuse an engine whose package is missing before any worker starts."""
    if engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise TunesmithError(
            "train.distributed: deepspeed is not installed; `pip install tunesmith[deepspeed]` or use ddp/fsdp"
        )


def restart_count() -> int:
    """How many times torchrun has restarted this worker's group (0 outside torchrun or on the first attempt)."""
    return int(os.environ.get(RESTART_COUNT_ENV, "0"))


def node_count() -> int:
    """Machines in this run (torchrun's GROUP_WORLD_SIZE: one agent per node); 1 outside torchrun."""
    return int(os.environ.get("GROUP_WORLD_SIZE", "1"))


def torchrun_command(config_file: str, run_dir: str, cluster: Cluster, resume: bool) -> list[str]:
    """The torchrun line that runs `tunesmith train` on this node's ranks: --standalone on one node; c10d
    rendezvous at master_addr:master_port on several, every worker's output teed under RUN/logs/node-R."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cluster.processes}"]
    if cluster.nodes == 1:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={cluster.nodes}",
            f"--node-rank={cluster.node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={cluster.master_addr}:{cluster.master_port}",
            f"--rdzv-id={Path(run_dir).name}",  # every node names the same run: a stray launch cannot join
            "--tee=3",
            f"--log-dir={Path(run_dir) / 'logs' / f'node-{cluster.node_rank}'}",
        ]
    command += [f"--max-restarts={cluster.max_restarts}", "-m", "tunesmith.cli", "train", config_file]
    return command + (["--resume"] if resume else [])


def launch(config_file: str, run_dir: str, cluster: Cluster, resume: bool) -> None:
    """Run `tunesmith train` on this node's ranks through torch.distributed.run (gloo on CPU, NCCL on GPU)."""
    env = {**os.environ, RUN_DIR_ENV: run_dir}
    if cluster.nodes > 1:  # every line a worker prints says where it came from
        env.setdefault(LOG_PREFIX_ENV, f"[node{cluster.node_rank} rank${{rank}}]:")
    if cluster.max_restarts > 0:
        # torchrun's workers share the agent's rendezvous store by default, and it outlives a restart: gloo's
        # address keys of the attempt that died are still there, so the new rank 0 can read a dead rank's address
        # before the new rank publishes its own and retry a refused connection until it times out (it did in CI,
        # and under load here). Off, rank 0 hosts a fresh store on each attempt's own port.
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    result = subprocess.run(torchrun_command(config_file, run_dir, cluster, resume), env=env, check=False)
    if result.returncode != 0:
        raise TunesmithError(
            f"distributed training failed (exit code {result.returncode}); see the worker output above"
        )
