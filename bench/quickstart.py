"""`make demo`'s figures, kept: runs `tunesmith quickstart` (or `quickstart preference`) in its own process, timed
from outside (imports, the GGUF conversion unless cached, data, training, evaluation, report), and copies the
figures the demo saves in its run folder (quickstart.json) into bench/results/quickstart.json (or
quickstart_preference.json) with the wall time, whether the converted model was already cached, and the host, load
before and after, date, command and versions (bench/results_file.py).

A figure taken while other jobs share the cores measures them too: the load averages are in the file; quote only a
run whose load before and after stayed near zero as "on a quiet host".
Run: .venv/bin/python bench/quickstart.py [--demo sft|preference] [--folder /tmp/tunesmith-demo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from results_file import Provenance, write_results
from tunesmith.models.loading import default_cache_dir

RUN_NAMES = {"sft": "headlines", "preference": "headline-style"}  # the demos' output.name
RESULT_NAMES = {"sft": "quickstart", "preference": "quickstart_preference"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", choices=sorted(RUN_NAMES), default="sft")
    parser.add_argument(
        "--folder", default="/tmp/tunesmith-demo", help="emptied first, so the demo starts from nothing"
    )
    args = parser.parse_args()
    folder = Path(args.folder)
    shutil.rmtree(folder, ignore_errors=True)
    cache = default_cache_dir()
    cached_before = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    command = [sys.executable, "-m", "tunesmith.cli", "quickstart", args.demo, "--dir", str(folder)]
    provenance = Provenance.begin()
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    run = folder / ("preference" if args.demo == "preference" else "") / "runs" / RUN_NAMES[args.demo]
    figures = json.loads((run / "quickstart.json").read_text())
    record = {
        "demo_command": " ".join(["tunesmith", *command[3:]]),
        "demo_seconds": round(seconds, 1),
        "demo_minutes": round(seconds / 60, 1),
        # The first run on a machine also converts SmolLM2's GGUF into a safetensors folder under the cache.
        "cache_entries_before": cached_before,
        "figures": figures,
    }
    print(write_results(RESULT_NAMES[args.demo], record, provenance))


if __name__ == "__main__":
    main()
