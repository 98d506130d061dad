"""Multi-process training: `--nproc N` relaunches the same run under torchrun; rank 0 alone writes the run folder."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from tunesmith.console import world_size
from tunesmith.errors import TunesmithError
from tunesmith.run_folder import RUN_DIR_ENV


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
            "train.distributed: deepspeed is not installed; `pip install deepspeed` (GPU machines) or use ddp/fsdp"
        )


def launch(config_file: str, run_dir: str, processes: int, resume: bool) -> None:
    """Run `tunesmith train` on `processes` local ranks through torch.distributed.run (gloo on CPU, NCCL on GPU)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "tunesmith.cli",
        "train",
        config_file,
    ]
    if resume:
        command.append("--resume")
    result = subprocess.run(command, env={**os.environ, RUN_DIR_ENV: run_dir}, check=False)
    if result.returncode != 0:
        raise TunesmithError(
            f"distributed training failed (exit code {result.returncode}); see the worker output above"
        )
