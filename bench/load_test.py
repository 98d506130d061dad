"""Load test of `tunesmith serve`: N concurrent clients for T seconds against loopback.

Reports requests/s, p50/p95 latency of answered requests, status counts (only deliberate 429s are allowed as
errors) and the server process's resident memory before and after. Serves --run RUN, or by default a tiny
LoRA run it trains first (seconds), so the figures measure the server rather than a model's speed.
Run: .venv/bin/python bench/load_test.py [--clients 50] [--seconds 30] [--run runs/x]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results"


def tiny_run(folder: Path) -> str:
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from conftest import build_model_folder, tiny_config, write_jsonl
    from tunesmith import api
    from tunesmith.config import config_from_dict

    model = build_model_folder(folder / "model")
    data = write_jsonl(
        folder / "data.jsonl", [{"prompt": f"say {i}", "response": "the cat sat"} for i in range(16)]
    )
    raw = tiny_config(
        folder,
        model,
        4,
        data={"train_file": str(data), "validation_ratio": 0.0},
        train={"max_steps": 4},
        eval={"samples": 0, "before_training": False},
        output={"name": "tiny"},
    )
    return api.train(config_from_dict(raw))["run_dir"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def client(base: str, model: str, deadline: float, results: list, max_tokens: int) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "say something"}],
        "max_tokens": max_tokens,
    }
    async with httpx.AsyncClient(timeout=60) as http:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await http.post(f"{base}/v1/chat/completions", json=body)
                results.append((response.status_code, time.perf_counter() - started))
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")) / 10)
            except httpx.HTTPError as exc:
                results.append((type(exc).__name__, time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished causal-LM run folder (default: train a tiny one)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=4)
    args = parser.parse_args()
    run = args.run or tiny_run(Path(tempfile.mkdtemp(prefix="load-test-")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "tunesmith.cli",
        "serve",
        run,
        "--port",
        str(port),
        "--max-concurrency",
        str(args.max_concurrency),
        "--max-tokens",
        str(max(16, args.max_tokens)),
    ]
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TUNESMITH_API_KEY": ""},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        model = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
        before = rss_mb(server.pid)
        results: list = []
        deadline = time.perf_counter() + args.seconds

        async def everyone():
            await asyncio.gather(
                *(client(base, model, deadline, results, args.max_tokens) for _ in range(args.clients))
            )

        started = time.perf_counter()
        asyncio.run(everyone())
        elapsed = time.perf_counter() - started
        after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    answered = sorted(latency for status, latency in results if status == 200)
    counts: dict[str, int] = {}
    for status, _ in results:
        counts[str(status)] = counts.get(str(status), 0) + 1
    unexpected = {k: v for k, v in counts.items() if k not in {"200", "429"}}
    report = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "server_max_concurrency": args.max_concurrency,
        "max_tokens": args.max_tokens,
        "requests": len(results),
        "answered_per_second": round(len(answered) / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(answered), 1) if answered else None,
        "p95_ms": round(1000 * answered[int(0.95 * (len(answered) - 1))], 1) if answered else None,
        "status_counts": counts,
        "unexpected_errors": unexpected,
        "server_rss_mb_before": before,
        "server_rss_mb_after": after,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load_test.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if unexpected:
        sys.exit(f"unexpected errors: {unexpected}")


if __name__ == "__main__":
    main()
