"""The web UI's jobs: each a `tunesmith.api` call (train, plan, export) in its own process, one at a time.

A job is a folder under WORKDIR/jobs/<id>/: job.json (what to run, when it was queued, started and ended, its pid,
its state and, when it failed, the one-line reason), log.txt (everything the process printed) and result.json
(what the api call returned). A training job's progress lives in its run folder (metrics.jsonl, run.json), which
the job names. Nothing is held only in the UI server's memory: a page refresh, a second tab or a restart of
`tunesmith ui` reads the same files and finds running jobs still running (their process is detached) and finished
ones finished, failures with their reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from tunesmith.errors import TunesmithError

KINDS = ("train", "plan", "export", "evaluate")
ACTIVE = ("queued", "running")


def _write(path: Path, record: dict) -> None:
    """Atomic write: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child that ended, not yet reaped) is not running
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Jobs:
    """The job queue of one work folder. `max_running` jobs run at once (1 by default); the rest wait in order."""

    def __init__(self, workdir: Path, max_running: int = 1):
        self.root = workdir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_running = max_running
        self.lock = threading.Lock()
        self.children: dict[str, subprocess.Popen] = {}  # started by this server (reaped here)

    # -- reading -------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict:
        path = self.root / job_id / "job.json"
        if not job_id.replace("-", "").isalnum() or not path.is_file():
            raise TunesmithError(f"job {job_id}: no such job in {self.root}")
        return self._settle(json.loads(path.read_text(encoding="utf-8")))

    def all(self) -> list[dict]:
        jobs = []
        for path in self.root.glob("*/job.json"):
            try:
                jobs.append(self._settle(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, json.JSONDecodeError):
                continue  # a job folder being written right now
        return sorted(jobs, key=lambda j: j["queued_at"])

    def log(self, job_id: str, tail: int = 4000) -> str:
        path = self.root / self.get(job_id)["id"] / "log.txt"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return text[-tail:]

    def result(self, job_id: str) -> dict | None:
        path = self.root / job_id / "result.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def _settle(self, job: dict) -> dict:
        """A job marked running whose process is gone and that wrote no end: it died (killed, out of memory)."""
        if job["state"] == "running" and not pid_alive(job.get("pid")):
            time.sleep(0.2)  # the worker writes its end just before it exits
            fresh = json.loads((self.root / job["id"] / "job.json").read_text(encoding="utf-8"))
            if fresh["state"] == "running":
                fresh |= {
                    "state": "failed",
                    "ended_at": time.time(),
                    "reason": last_error(self.root / job["id"] / "log.txt")
                    or "the job's process ended without a word (killed, or out of memory)",
                }
                _write(self.root / job["id"] / "job.json", fresh)
            return fresh
        return job

    # -- changing ------------------------------------------------------------------------------------------
    def submit(self, kind: str, kwargs: dict, title: str, run_dir: str | None = None) -> dict:
        if kind not in KINDS:
            raise TunesmithError(f"job: unknown kind {kind}; one of {', '.join(KINDS)}")
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.root / job_id
        folder.mkdir()
        job = {
            "id": job_id,
            "kind": kind,
            "title": title,
            "kwargs": kwargs,
            "run_dir": run_dir,
            "state": "queued",
            "queued_at": time.time(),
            "started_at": None,
            "ended_at": None,
            "pid": None,
            "reason": None,
        }
        _write(folder / "job.json", job)
        self.start_next()
        return self.get(job_id)

    def start_next(self) -> None:
        """Start queued jobs, oldest first, while fewer than max_running run."""
        with self.lock:
            jobs = self.all()
            running = sum(j["state"] == "running" for j in jobs)
            for job in (j for j in jobs if j["state"] == "queued"):
                if running >= self.max_running:
                    break
                self._start(job)
                running += 1

    def _start(self, job: dict) -> None:
        folder = self.root / job["id"]
        with (folder / "log.txt").open("ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "tunesmith.ui.worker", str(folder)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives this server: a restart of `tunesmith ui` reattaches
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        self.children[job["id"]] = child
        _write(folder / "job.json", job | {"state": "running", "started_at": time.time(), "pid": child.pid})

    def cancel(self, job_id: str) -> dict:
        """A queued job is dropped; a running one gets SIGTERM: training saves a checkpoint and stops cleanly."""
        job = self.get(job_id)
        folder = self.root / job_id
        if job["state"] == "queued":
            _write(folder / "job.json", job | {"state": "cancelled", "ended_at": time.time()})
        elif job["state"] == "running":
            _write(folder / "job.json", job | {"cancel_requested": True})
            with contextlib.suppress(ProcessLookupError):
                os.kill(job["pid"], signal.SIGTERM)
        return self.get(job_id)

    def reap(self) -> None:
        """Collect children that ended and start what waits (called by the server's poller)."""
        for job_id, child in list(self.children.items()):
            if child.poll() is not None:
                del self.children[job_id]
        self.start_next()


def last_error(log: Path) -> str | None:
    """The last line a failed command printed as `error: ...` (tunesmith's one-line reasons)."""
    if not log.exists():
        return None
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1][len("error: ") :]
    tail = [line for line in lines if line.strip()]
    return tail[-1] if tail else None
