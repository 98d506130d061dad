"""One UI job's process: `python -m tunesmith.ui.worker JOB_FOLDER` runs the job's `tunesmith.api` call and writes
how it ended into JOB_FOLDER/job.json (finished, failed with tunesmith's one-line reason, or cancelled) and what
it returned into result.json. Its output goes to JOB_FOLDER/log.txt (the UI server opens it)."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from tunesmith import api
from tunesmith.console import quiet_libraries
from tunesmith.errors import TunesmithError
from tunesmith.ui.jobs import _write


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def run(folder: Path) -> int:
    job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    quiet_libraries()
    state, reason, code = "finished", None, 0
    try:
        result = getattr(api, job["kind"])(**job["kwargs"])
        _write(folder / "result.json", {"result": _jsonable(result)})
        if isinstance(result, dict) and result.get("status") == "stopped":
            state = "cancelled"
    except TunesmithError as exc:
        print(f"error: {exc}", flush=True)
        state, reason, code = "failed", str(exc), 2
    except KeyboardInterrupt:
        print("error: interrupted", flush=True)
        state, reason, code = "cancelled", "interrupted", 130
    except Exception as exc:  # an unexpected fault: the trace goes to the log, one line to the page
        traceback.print_exc()
        state, reason, code = "failed", f"{type(exc).__name__}: {exc} (the job's log has the trace)", 1
    current = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    if state == "finished" and current.get("cancel_requested"):
        state = "cancelled"
    _write(folder / "job.json", current | {"state": state, "reason": reason, "ended_at": time.time()})
    print(f"job {state}" + (f": {reason}" if reason else ""), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
