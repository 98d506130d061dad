"""`train.launcher: ray`: the same recipe's workers started by Ray Train (`ray.train.torch.TorchTrainer`) instead of
torchrun, for users who already run a Ray cluster; Ray sets RANK/WORLD_SIZE and the process group."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch

from tunesmith.errors import TunesmithError
from tunesmith.run_folder import RUN_DIR_ENV
from tunesmith.training.distributed import RESTART_COUNT_ENV, Cluster


def check_ray(cluster: Cluster) -> None:
    if importlib.util.find_spec("ray") is None:
        raise TunesmithError(
            "train.launcher: ray is not installed; `pip install tunesmith[ray]` or use torchrun"
        )
    if cluster.nodes > 1:
        raise TunesmithError(
            "--nnodes: Ray places the workers on its own nodes; drop --nnodes and give --nproc the total"
        )


def launch(worker: Callable[[dict], None], config_file: str, run_dir: str, cluster: Cluster, resume: bool):
    """Run `worker({"config_file", "run_dir", "resume"})` on cluster.world Ray workers (gloo on CPU, NCCL on GPU),
    on the Ray cluster at RAY_ADDRESS, or on one started here for the run."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started_here = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if started_here:  # a local Ray: one logical CPU per worker even on a smaller machine
        ray.init(num_cpus=max(os.cpu_count() or 1, cluster.world), include_dashboard=False)
    cuda = torch.cuda.is_available()
    trainer = TorchTrainer(
        worker,
        train_loop_config={"config_file": config_file, "run_dir": run_dir, "resume": resume},
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cluster.world, use_gpu=cuda, resources_per_worker={"CPU": 1}
        ),
        run_config=RunConfig(
            name=Path(run_dir).name,
            storage_path=str(Path(run_dir) / "ray"),
            failure_config=FailureConfig(max_failures=cluster.max_restarts),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps the worker's error; its own text says which worker and why
        raise TunesmithError(f"training under Ray failed: {exc}") from exc
    finally:
        if started_here:
            ray.shutdown()


def worker_environment(settings: dict) -> None:
    """What a Ray worker sets before it trains: the run folder the launcher chose and, when the run has logged a
    step already, that Ray restarted the group (FailureConfig), so the recipe resumes as after torchrun's restart."""
    os.environ[RUN_DIR_ENV] = settings["run_dir"]
    restarted = (Path(settings["run_dir"]) / "metrics.jsonl").exists() and not settings["resume"]
    os.environ[RESTART_COUNT_ENV] = "1" if restarted else "0"
