"""Launch files for clusters (`tunesmith launch CFG --print slurm|accelerate|skypilot`): the same torchrun line
`tunesmith train --nnodes` runs, written for the scheduler that starts it on every node."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunesmith.config import Config
from tunesmith.errors import TunesmithError

TARGETS = ("slurm", "accelerate", "skypilot")
ENGINES = ("ddp", "fsdp", "zero2", "zero3")


@dataclass(frozen=True)
class LaunchPlan:
    """What the launch file starts: the config (an absolute path every node reads), its run folder on shared
    storage, the nodes and GPUs, and the engine (ddp, fsdp = FSDP2, zero2/zero3 = DeepSpeed)."""

    config_file: str
    run_dir: str
    nodes: int
    gpus_per_node: int
    engine: str
    settings: tuple[str, ...] = ()  # the --set KEY=VALUE the file was written with, passed on to every node
    master_port: int = 29500
    max_restarts: int = 3

    @property
    def overrides(self) -> list[str]:
        """KEY=VALUE for --set: the user's, then the engine the file was written for."""
        engine = [f"train.distributed={self.engine}"] if self.engine in ("ddp", "fsdp") else []
        engine = engine or ["train.distributed=deepspeed", f"train.zero_stage={self.engine[-1]}"]
        return [*self.settings, *engine]

    def set_arguments(self) -> list[str]:
        return [f"--set {shlex.quote(setting)}" for setting in self.overrides]


def plan_for(
    cfg: Config, config_file: str | Path, nodes: int, gpus_per_node: int, engine: str | None, settings=()
) -> LaunchPlan:
    """The LaunchPlan for a config (`settings`: the --set overrides `cfg` was loaded with); `engine` None takes
    the config's own train.distributed."""
    if nodes < 1 or gpus_per_node < 1:
        raise TunesmithError(f"--nodes {nodes} --gpus-per-node {gpus_per_node}: both must be 1 or more")
    if engine is None:
        distributed = cfg.train.distributed
        engine = f"zero{cfg.train.zero_stage}" if distributed == "deepspeed" else distributed
    if engine not in ENGINES:
        raise TunesmithError(f"--engine: '{engine}' is not one of {', '.join(ENGINES)}")
    from tunesmith.training.distributed import per_device_batch_for

    per_device_batch_for(cfg.train.batch_size, nodes * gpus_per_node)  # refused now, not on the cluster
    name = cfg.output.name or Path(config_file).stem
    run_dir = str((Path(cfg.output.dir) / name).resolve())
    config_path = str(Path(config_file).resolve())
    return LaunchPlan(config_path, run_dir, nodes, gpus_per_node, engine, tuple(settings))


def write(target: str, plan: LaunchPlan) -> str:
    writers = {"slurm": slurm, "accelerate": accelerate, "skypilot": skypilot}
    if target not in writers:
        raise TunesmithError(f"--print: '{target}' is not one of {', '.join(TARGETS)}")
    return writers[target](plan)


def torchrun_line(plan: LaunchPlan, node_rank: str, master_addr: str, run_id: str) -> str:
    """torchrun on one node (`node_rank`, `master_addr`, `run_id`: shell expressions the scheduler fills in)."""
    arguments = [
        "python -m torch.distributed.run",
        f"--nnodes={plan.nodes}",
        f"--node-rank={node_rank}",
        f"--nproc-per-node={plan.gpus_per_node}",
        "--rdzv-backend=c10d",
        f'--rdzv-endpoint="{master_addr}:{plan.master_port}"',
        f'--rdzv-id="{run_id}"',
        f"--max-restarts={plan.max_restarts}",
        "--tee=3",
        f'--log-dir="$TUNESMITH_RUN_DIR/logs/node-{node_rank}"',
        "-m tunesmith.cli train",
        shlex.quote(plan.config_file),
        *plan.set_arguments(),
        "$RESUME",
    ]
    return " \\\n    ".join(arguments)


# What every node's shell sets before torchrun: the shared run folder, line prefixes, resume when requeued.
def _shared_setup(plan: LaunchPlan) -> list[str]:
    return [
        f"export TUNESMITH_RUN_DIR={shlex.quote(plan.run_dir)}  # on storage every node mounts; rank 0 writes it",
        'mkdir -p "$TUNESMITH_RUN_DIR"',
        "# a requeued or restarted job continues from its last complete checkpoint",
        'RESUME=""; ls -d "$TUNESMITH_RUN_DIR"/checkpoints/checkpoint-* >/dev/null 2>&1 && RESUME="--resume"',
    ]


def slurm(plan: LaunchPlan) -> str:
    """An sbatch script: one task per node, each running torchrun for that node's GPUs (c10d rendezvous on the
    job's first node)."""
    name = Path(plan.run_dir).name
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={plan.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={plan.gpus_per_node}",
        f"#SBATCH --output={name}-%j.out",
        "#SBATCH --requeue",
        "set -euo pipefail",
        *_shared_setup(plan),
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export RESUME",
        "# each node's own rank and line prefix are read inside the task, where srun has set SLURM_NODEID",
        "srun --kill-on-bad-exit=1 bash -c '",
        '  export TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE="[node$SLURM_NODEID rank\\${rank}]:"',
        "  " + torchrun_line(plan, "$SLURM_NODEID", "$MASTER_ADDR", "$SLURM_JOB_ID").replace("'", "'\\''"),
        "'",
    ]
    return "\n".join(lines) + "\n"


def accelerate(plan: LaunchPlan) -> str:
    """An accelerate config (`accelerate launch --config_file F --machine_rank R -m tunesmith.cli train CFG`):
    FSDP2 wrapping each transformer block, or DeepSpeed ZeRO-2/3, or plain DDP."""
    config: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": plan.nodes,
        "num_processes": plan.nodes * plan.gpus_per_node,
        "machine_rank": 0,  # each node passes its own: accelerate launch --machine_rank R
        "main_process_ip": "127.0.0.1" if plan.nodes == 1 else "MASTER_ADDR",
        "main_process_port": plan.master_port,
        "rdzv_backend": "static" if plan.nodes == 1 else "c10d",
        "same_network": True,
        "mixed_precision": "no",  # train.precision decides (measured), tunesmith passes it to the Trainer
        "use_cpu": False,
        "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(plan.engine, "DEEPSPEED"),
    }
    if plan.engine == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
        }
    elif plan.engine in ("zero2", "zero3"):
        config["deepspeed_config"] = {
            "zero_stage": int(plan.engine[-1]),
            "zero3_init_flag": plan.engine == "zero3",
            "zero3_save_16bit_model": plan.engine == "zero3",
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
        }
    command = ["accelerate launch --config_file accelerate.yaml --machine_rank $NODE_RANK"]
    command += ["-m tunesmith.cli train", shlex.quote(plan.config_file), *plan.set_arguments()]
    header = [
        f"# accelerate config for {plan.nodes} node(s) x {plan.gpus_per_node} GPU(s), engine {plan.engine}",
        f"# on every node: export TUNESMITH_RUN_DIR={shlex.quote(plan.run_dir)}  (storage every node mounts)",
        "#   " + " ".join(command),
    ]
    if plan.nodes > 1:
        header.append("# replace MASTER_ADDR below with node 0's address")
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False)


def skypilot(plan: LaunchPlan) -> str:
    """A SkyPilot task: `sky launch -c NAME task.yaml` provisions the nodes and runs torchrun on each."""
    run = "\n".join(
        [
            "set -euo pipefail",
            *_shared_setup(plan),
            'MASTER_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)',
            'export TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE="[node$SKYPILOT_NODE_RANK rank\\${rank}]:"',
            torchrun_line(plan, "$SKYPILOT_NODE_RANK", "$MASTER_ADDR", "$SKYPILOT_TASK_ID"),
        ]
    )
    task = {
        "name": Path(plan.run_dir).name,
        "workdir": ".",  # synced to every node; run `sky launch` from the folder that holds the config
        "num_nodes": plan.nodes,
        "resources": {"accelerators": f"H100:{plan.gpus_per_node}"},  # any GPU type SkyPilot knows
        "setup": "pip install tunesmith deepspeed"
        if plan.engine.startswith("zero")
        else "pip install tunesmith",
        "run": run + "\n",
    }
    header = (
        f"# SkyPilot task: sky launch -c {Path(plan.run_dir).name} task.yaml\n"
        f"# {plan.run_dir} must be on storage every node mounts (a SkyPilot file_mounts bucket, or NFS)\n"
    )
    return header + yaml.dump(task, Dumper=_BlockStrings, sort_keys=False, width=200)


class _BlockStrings(yaml.SafeDumper):
    """Multi-line strings (the run script) as YAML literal blocks, readable as the shell script they are."""


_BlockStrings.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)
