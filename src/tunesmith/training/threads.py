"""How many threads torch computes with on a CPU that other processes use too: chosen every step from their load.

torch's OpenMP threads meet at a barrier after every parallel region, so a step runs at the pace of the slowest
thread. When another process takes part of one core, the thread that shares that core is descheduled for whole
time slices while the others spin at the barrier: on a 2-core host, two threads beside one busy process train
several times slower than one thread does (bench/shared_cpu.py measures it). So, unless the user fixed the count
(`train.num_threads`, or OMP_NUM_THREADS as torchrun sets it), a run leaves to other processes every core they
keep busy more than half the time and takes the rest, measured over each optimizer step from /proc/stat (the whole
machine) less /proc/self/stat (this process), and takes the cores back as soon as they are free again.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from pathlib import Path

import torch
from transformers import TrainerCallback

# A core counts as taken when other processes kept it busy for more than this share of a step. Below it sit the
# kernel's own threads and short-lived commands, and a process busy part of the time: measured on the quickstart
# (bench/results/shared_cpu_default.json), two threads beside a process busy a third of the time train faster than
# one, and one thread is faster beside a process busy two thirds of the time or all of it. Such a process reads at
# its duty beside one of our threads (a core of its own) and lower beside two (it shares), so halfway keeps a
# third-time process on the two-thread side and a two-thirds one on the one-thread side either way.
IGNORED_SHARE = 0.5
# Shorter windows than this are too coarse for /proc's 10 ms ticks: the reading waits for the next step.
SHORTEST_WINDOW_SECONDS = 0.5
# torch's own count (the physical cores it may use), before anything here lowers it.
TORCH_THREADS = torch.get_num_threads()


def threads_for(cores: int, others_busy: float) -> int:
    """Threads to compute with when other processes keep `others_busy` cores busy: each core they occupy beyond
    IGNORED_SHARE is left to them, and at least one thread always runs."""
    taken = max(0, math.ceil(others_busy - IGNORED_SHARE))
    return max(1, cores - taken)


class CpuShare:
    """Cores other processes kept busy since the previous reading (None where /proc cannot be read)."""

    def __init__(self, proc: Path = Path("/proc")):
        self.proc = proc
        self.cores = os.cpu_count() or 1
        self.last = self.ticks()

    def ticks(self) -> tuple[int, int, int, float] | None:
        """(busy ticks of the machine, all its ticks, this process's ticks, when): a snapshot."""
        try:
            fields = [int(x) for x in (self.proc / "stat").read_text().splitlines()[0].split()[1:]]
            own = (self.proc / "self" / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
        return total - idle, total, int(own[11]) + int(own[12]), time.monotonic()  # utime + stime

    def others_busy(self) -> float | None:
        """Cores busy with other processes since the last reading; None while the window is too short to tell."""
        now = self.ticks()
        if now is None or self.last is None or now[3] - self.last[3] < SHORTEST_WINDOW_SECONDS:
            return None
        busy, total, own = (now[i] - self.last[i] for i in range(3))
        self.last = now
        if total <= 0:
            return None
        return max(0.0, (busy - own) / total * self.cores)


class ThreadGovernor(TrainerCallback):
    """Sets torch's thread count from the other processes' load at the start and after every optimizer step; says
    the first choice and what it did in the end, and records it (`write`: run.json's `threads`)."""

    def __init__(self, say, write, share: CpuShare | None = None, most: int | None = None, set_threads=None):
        self.say, self.write = say, write
        self.set_threads = set_threads or torch.set_num_threads
        self.share = share or CpuShare()
        self.most = most or TORCH_THREADS
        self.threads = self.most
        self.steps_at: Counter[int] = Counter()
        self.changes = 0
        self.at_start: dict = {}

    def apply(self, others: float) -> None:
        wanted = min(self.most, threads_for(self.share.cores, others))
        if wanted != self.threads:
            self.set_threads(wanted)
            self.changes += 1
            self.threads = wanted

    def on_train_begin(self, args, state, control, **kwargs):
        others = self.share.others_busy()  # since the governor was made: loading, evaluations before training
        if others is None and self.share.last is not None:
            time.sleep(SHORTEST_WINDOW_SECONDS)
            others = self.share.others_busy()
        if others is None:
            self.say(
                "threads: /proc cannot be read here, so torch's own count stays (train.num_threads sets it)"
            )
            self.share = None
            return
        self.apply(others)
        self.changes = 0
        self.at_start = {"at_start": self.threads, "others_busy_at_start": round(others, 2)}
        self.say(
            f"threads: {self.threads} of {self.most} (other processes busy on {others:.1f} cores); "
            "revisited every step, train.num_threads fixes the count"
        )
        self.record()

    def on_step_end(self, args, state, control, **kwargs):
        if self.share is None:
            return
        self.steps_at[self.threads] += 1
        others = self.share.others_busy()
        if others is not None:
            self.apply(others)

    def on_train_end(self, args, state, control, **kwargs):
        if self.share is None:
            return
        self.record()
        if self.changes:
            counts = ", ".join(f"{n} steps on {t}" for t, n in sorted(self.steps_at.items(), reverse=True))
            self.say(f"threads: changed {self.changes} times as other processes came and went ({counts})")

    def record(self) -> None:
        steps_at = {str(t): n for t, n in sorted(self.steps_at.items())}
        policy = "auto: the cores other processes leave free, every step"
        self.write(
            {
                "policy": policy,
                "most": self.most,
                **self.at_start,
                "steps_at": steps_at,
                "changes": self.changes,
            }
        )


def fit_to_load(say) -> None:
    """Before a run's first step (data, generation, evaluations): the threads the other processes' load leaves,
    from half a second's reading. Decoding one token at a time is all barriers, so it suffers most."""
    share = CpuShare()
    time.sleep(SHORTEST_WINDOW_SECONDS)
    others = share.others_busy()
    if others is None:
        return
    wanted = min(TORCH_THREADS, threads_for(share.cores, others))
    if wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
        say(f"threads: {wanted} of {TORCH_THREADS} for now (other processes busy on {others:.1f} cores)")


def governed(num_threads: int | None, processes: int) -> bool:
    """Whether the governor chooses: not when the user (train.num_threads, OMP_NUM_THREADS) or a launcher fixed the
    count, not on a GPU (its threads feed the device), and not with several processes (they share the cores)."""
    return (
        num_threads is None
        and "OMP_NUM_THREADS" not in os.environ
        and processes == 1
        and not torch.cuda.is_available()
    )
