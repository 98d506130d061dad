"""How long `make setup` spends compiling llama.cpp: the Makefile's llama-cpp-python step, timed from a clean start.

Runs the same CMAKE_ARGS as the Makefile with `pip wheel --no-cache-dir` (so nothing is reused), samples the load
average every 30 s while it builds (a build on shared cores measures the other jobs too), and writes
bench/results/gguf_llama_cpp_build.json. Run it alone on a quiet host:

    .venv/bin/python bench/llama_cpp_build.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import Provenance, write_results  # noqa: E402

VERSION = "0.3.36"
CMAKE_ARGS = ["-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF"]
INCLUDE_LINE = 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama-cpp-python never loads it" FORCE)'


def sample_load(samples: list[dict], stop: threading.Event) -> None:
    while not stop.is_set():
        samples.append({"time": time.strftime("%H:%M:%S"), "load_1min": round(os.getloadavg()[0], 2)})
        stop.wait(30)


def main() -> None:
    provenance = Provenance.begin()
    with tempfile.TemporaryDirectory() as tmp:
        include = Path(tmp) / "no-common.cmake"
        include.write_text(INCLUDE_LINE + "\n", encoding="utf-8")
        env = dict(
            os.environ,
            CMAKE_ARGS=" ".join([*CMAKE_ARGS, f"-DCMAKE_PROJECT_INCLUDE={include}"]),
            CMAKE_BUILD_PARALLEL_LEVEL="2",
        )
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", tmp]
        samples: list[dict] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_load, args=(samples, stop), daemon=True)
        sampler.start()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [*command, f"llama-cpp-python=={VERSION}"], env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stop.set()
        if done.returncode != 0:
            sys.exit(f"the build failed:\n{done.stderr[-3000:]}")
        wheels = list(Path(tmp).glob("llama_cpp_python-*.whl"))
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        loads = [s["load_1min"] for s in samples]
        figures = {
            "build": {
                "wall_seconds": round(wall, 1),
                "user_seconds": round(user, 2),
                "system_seconds": round(system, 2),
                "cpu_seconds": round(user + system, 2),
                "compile_jobs": 2,
                "cmake_args": [*CMAKE_ARGS, f"-DCMAKE_PROJECT_INCLUDE=<a file: {INCLUDE_LINE}>"],
                "wheel_bytes": wheels[0].stat().st_size if wheels else None,
            },
            "load_while_building": {
                "what": "the 1-minute load average every 30 s while the build ran (2 cores)",
                "mean": round(sum(loads) / len(loads), 2),
                "min": min(loads),
                "max": max(loads),
                "samples": samples,
            },
        }
    path = write_results("gguf_llama_cpp_build", figures, provenance)
    print(
        f"llama-cpp-python {VERSION}: {wall / 60:.1f} min wall, {(user + system) / 60:.1f} CPU-min -> {path}"
    )


if __name__ == "__main__":
    main()
