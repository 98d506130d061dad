"""`make demo`'s figures, kept: runs `tunesmith quickstart` (or `quickstart preference`) in its own process, timed
from outside (imports, the GGUF conversion unless cached, data, training, evaluation, report), and copies the
figures the demo saves in its run folder (quickstart.json) into bench/results/quickstart.json (or
quickstart_preference.json) with the wall time, whether the converted model was already cached, and the host, load
before and after, date, command and versions (bench/results_file.py).

A figure taken while other jobs share the cores measures them too: the load averages are in the file; quote only a
run whose load before and after stayed near zero as "on a quiet host".
Run: .venv/bin/python bench/quickstart.py [--demo sft|preference] [--folder NEW_OR_EMPTY_DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import Provenance, write_results
from tunesmith.models.loading import default_cache_dir

RESULT_NAMES = {"sft": "quickstart", "preference": "quickstart_preference"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", choices=sorted(RESULT_NAMES), default="sft")
    parser.add_argument("--folder", help="a new or empty folder for the demo (default: a new temporary one)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="tunesmith-demo-"))
    if folder.exists() and any(
        folder.iterdir()
    ):  # the demo keeps data and configs it finds: start from nothing
        sys.exit(f"{folder} is not empty: give a new or empty --folder")
    cache = default_cache_dir()
    cached_before = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    command = [sys.executable, "-m", "tunesmith.cli", "quickstart", args.demo, "--dir", str(folder)]
    provenance = Provenance.begin()
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    saved = sorted(folder.rglob("quickstart.json"))  # <run>/quickstart.json: the demo's own closing figures
    if len(saved) != 1:
        sys.exit(f"expected one quickstart.json under {folder}, found {[str(p) for p in saved]}")
    figures = json.loads(saved[0].read_text())
    record = {
        "demo_command": " ".join(["tunesmith", *command[3:]]),
        "run": str(saved[0].parent),
        "demo_seconds": round(seconds, 1),
        "demo_minutes": round(seconds / 60, 1),
        # The first run on a machine also converts SmolLM2's GGUF into a safetensors folder under the cache.
        "cache_entries_before": cached_before,
        "figures": figures,
    }
    print(write_results(RESULT_NAMES[args.demo], record, provenance))


if __name__ == "__main__":
    main()
