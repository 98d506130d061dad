"""The thread governor: torch's CPU threads follow the cores other processes leave free."""

import subprocess
import sys
import time

import pytest

from tunesmith.training import threads
from tunesmith.training.threads import CpuShare, ThreadGovernor, governed, threads_for


@pytest.mark.parametrize(
    "cores, others, expected",
    [
        (2, 0.0, 2),  # a quiet host: every core
        (2, 0.1, 2),  # the kernel's own threads and short commands do not cost a core
        (2, 0.33, 2),  # a process busy a third of the time: two threads still train faster
        (2, 0.67, 1),  # busy two thirds of the time: its core is left to it
        (2, 1.0, 1),
        (2, 3.0, 1),  # never fewer than one thread
        (16, 3.6, 12),
        (16, 3.4, 13),
    ],
)
def test_a_core_another_process_keeps_busy_is_left_to_it(cores, others, expected):
    assert threads_for(cores, others) == expected


def write_proc(root, busy, idle, own):
    """A /proc with the machine's ticks (user=busy, idle) and this process's utime+stime = own."""
    (root / "self").mkdir(exist_ok=True)
    (root / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    (root / "self" / "stat").write_text(f"1 (py thon) R 0 0 0 0 0 0 0 0 0 0 {own} 0 0 0\n")


def test_the_others_load_is_the_machines_busy_time_less_this_process(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    clock = iter([100.0, 101.0, 101.1])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    write_proc(tmp_path, busy=1000, idle=1000, own=400)
    share = CpuShare(tmp_path)
    write_proc(tmp_path, busy=1150, idle=1050, own=450)  # 200 ticks: 150 busy, 50 of them ours
    assert share.others_busy() == pytest.approx(1.0)  # 100 of 200 ticks on 2 cores: one core
    write_proc(tmp_path, busy=1160, idle=1060, own=460)
    assert share.others_busy() is None  # 0.1 s later: too short a window to tell


def test_an_unreadable_proc_leaves_torch_alone(tmp_path):
    assert CpuShare(tmp_path / "missing").others_busy() is None


class FakeShare:
    cores = 2

    def __init__(self, readings):
        self.readings = list(readings)
        self.last = (0, 0, 0, 0.0)

    def others_busy(self):
        return self.readings.pop(0)

    def ticks(self):
        return self.last


def test_the_governor_gives_a_core_up_while_another_process_uses_it_and_takes_it_back():
    said, records, calls = [], [], []
    governor = ThreadGovernor(
        said.append,
        records.append,
        share=FakeShare([0.9, 0.05, None, 1.0, 0.0]),
        most=2,
        set_threads=calls.append,
    )
    governor.on_train_begin(None, None, None)
    for _ in range(4):
        governor.on_step_end(None, None, None)
    governor.on_train_end(None, None, None)
    assert calls == [1, 2, 1, 2]  # the None reading (too short a step) changes nothing
    assert said[0].startswith("threads: 1 of 2 (other processes busy on 0.9 cores)")
    assert "changed 3 times" in said[-1]
    assert records[-1]["at_start"] == 1 and records[-1]["others_busy_at_start"] == 0.9
    assert records[-1]["steps_at"] == {"1": 2, "2": 2} and records[-1]["changes"] == 3


def test_a_fixed_count_a_launcher_or_several_processes_turn_the_governor_off(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.torch.cuda, "is_available", lambda: False)
    assert governed(None, 1)
    assert not governed(2, 1)  # train.num_threads
    assert not governed(None, 2)  # --nproc: the ranks share the cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's setting, or the user's
    assert not governed(None, 1)


def test_a_busy_process_is_seen_on_a_real_proc():
    share = CpuShare()
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"]
    )
    time.sleep(1.2)
    others = share.others_busy()
    busy.wait()
    assert others is not None and others >= 0.5  # the spinning child: most of one core, whatever else runs


def test_before_the_first_step_a_busy_host_gets_fewer_threads(monkeypatch):
    monkeypatch.setattr(threads, "TORCH_THREADS", 2)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(threads.CpuShare, "others_busy", lambda self: 0.8)
    monkeypatch.setattr(threads.CpuShare, "__init__", lambda self: setattr(self, "cores", 2))
    chosen, said = [], []
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(threads.torch, "set_num_threads", chosen.append)
    threads.fit_to_load(said.append)
    assert chosen == [1] and said == ["threads: 1 of 2 for now (other processes busy on 0.8 cores)"]
