"""Load test of `tunesmith serve` on 127.0.0.1: N clients for T seconds, half of them streaming, a third hanging up.

Client roles (of --clients N): a third stream and hang up after the first event while asking for the server's
whole --max-tokens; the rest of the first half stream to the end; the second half ask for whole answers. Every
client loops until the deadline, pausing 0-0.1 s after every answer. It checks what the server must hold under this:
  - only deliberate 429s (no 5xx, no connection errors);
  - no stuck lock: after the run, a one-token request answers at once, and /metrics shows no slot in use;
  - hang-ups stop generation: tokens generated per hung-up stream, from /metrics;
  - bounded memory: the server's peak resident memory (VmHWM) and RSS before/after.
Serves --run RUN, or by default a barely trained tiny LoRA run it trains first (seconds), whose answers never
end early, so the figures measure the server rather than a model. Bounded: loopback only, --seconds, --clients.
Run: .venv/bin/python bench/load_test.py [--clients 50] [--seconds 30] [--run runs/x]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from results_file import Provenance, write_results

HOST = "127.0.0.1"  # never anything else: this drives a server as hard as it can


def tiny_run(folder: Path) -> str:
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from conftest import build_model_folder, tiny_config
    from tunesmith import api
    from tunesmith.config import config_from_dict

    model = build_model_folder(folder / "model")
    raw = tiny_config(
        folder,
        model,
        16,
        data={"validation_ratio": 0.0},
        train={"max_steps": 1, "save_steps": 1, "eval_steps": 1},
        eval={"samples": 0, "before_training": False},
        output={"name": "tiny"},
    )
    return api.train(config_from_dict(raw))["run_dir"]


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak so far (VmHWM), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a /metrics page."""
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


class Client:
    """One simulated user; role is 'hang_up' (stream, leave after the first event), 'stream' or 'whole'."""

    def __init__(self, base: str, key: str, model: str, role: str, max_tokens: int, cap: int):
        self.base, self.headers, self.role = base, {"Authorization": f"Bearer {key}"}, role
        self.body = {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": cap if role == "hang_up" else max_tokens,
            "stream": role != "whole",
        }
        self.results: list[tuple[str, str, float]] = []  # (role, status, seconds to first byte or answer)

    async def run(self, deadline: float) -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status = await self.once(http)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.results.append((self.role, status, time.perf_counter() - started))
                # Retry-After says 1 s; a random 0-0.1 s after every answer keeps the slots contended and gives
                # every client the same chance at a freed slot, whatever its last answer was.
                await asyncio.sleep(random.uniform(0, 0.1))

    async def once(self, http: httpx.AsyncClient) -> str:
        url = f"{self.base}/v1/chat/completions"
        if not self.body["stream"]:
            return str((await http.post(url, json=self.body, headers=self.headers)).status_code)
        async with http.stream("POST", url, json=self.body, headers=self.headers) as response:
            if response.status_code != 200:
                await response.aread()
                return str(response.status_code)
            async for line in response.aiter_lines():
                if self.role == "hang_up" and line.startswith("data: "):
                    return "200 (hung up)"  # leaving the block closes the connection mid-body
            return "200"


def roles(clients: int) -> list[str]:
    hang_ups, streams = clients // 3, clients // 2
    return ["hang_up"] * hang_ups + ["stream"] * (streams - hang_ups) + ["whole"] * (clients - streams)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished causal-LM run folder (default: train a tiny one)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-tokens", type=int, default=16, help="what non-hanging-up clients ask for")
    parser.add_argument(
        "--server-max-tokens", type=int, default=256, help="the server's cap; hang-ups ask this"
    )
    parser.add_argument("--max-concurrency", type=int, default=4)
    args = parser.parse_args()
    if not 1 <= args.clients <= 200 or not 0 < args.seconds <= 300:
        sys.exit("keep it bounded: 1-200 clients, at most 300 seconds")
    run = args.run or tiny_run(Path(tempfile.mkdtemp(prefix="load-test-")))
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    key = secrets.token_hex(16)
    command = [
        *(sys.executable, "-m", "tunesmith.cli", "serve", run, "--host", HOST, "--port", str(port)),
        *("--max-concurrency", str(args.max_concurrency), "--max-tokens", str(args.server_max_tokens)),
    ]
    server_log = Path(tempfile.mkdtemp(prefix="load-test-server-")) / "stderr.log"
    with server_log.open("w") as log:  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "TUNESMITH_API_KEY": key}
        )
    base, auth = f"http://{HOST}:{port}", {"Authorization": f"Bearer {key}"}
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        model = httpx.get(f"{base}/v1/models", headers=auth).json()["data"][0]["id"]
        before, provenance = memory_mb(server.pid), Provenance.begin()
        clients = [
            Client(base, key, model, role, args.max_tokens, args.server_max_tokens)
            for role in roles(args.clients)
        ]
        deadline = time.perf_counter() + args.seconds

        async def everyone():
            await asyncio.gather(*(c.run(deadline) for c in clients))

        started = time.perf_counter()
        asyncio.run(everyone())
        elapsed = time.perf_counter() - started
        # No stuck lock: once the load stops, the slots empty and a one-token request answers at once.
        time.sleep(1.0)
        page = httpx.get(f"{base}/metrics").text
        probe_started = time.perf_counter()
        probe = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
            headers=auth,
            timeout=60,
        )
        probe_ms = round(1000 * (time.perf_counter() - probe_started), 1)
        after = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    server_errors = server_log.read_text().count("Traceback")
    results = [r for c in clients for r in c.results]
    counts: dict[str, int] = {}
    for role, status, _ in results:
        counts[f"{role} {status}"] = counts.get(f"{role} {status}", 0) + 1
    unexpected = {
        k: v for k, v in counts.items() if k.split(" ", 1)[1] not in {"200", "200 (hung up)", "429"}
    }
    hung_up = sum(v for k, v in counts.items() if k == "hang_up 200 (hung up)")
    cancelled = metric(page, "tunesmith_abandoned_generations_total")
    answered = [seconds for role, status, seconds in results if status.startswith("200")]
    report = {
        "clients": args.clients,
        "roles": {role: roles(args.clients).count(role) for role in ("hang_up", "stream", "whole")},
        "seconds": round(elapsed, 1),
        "server_max_concurrency": args.max_concurrency,
        "max_tokens": args.max_tokens,
        "hang_up_max_tokens": args.server_max_tokens,
        "requests": len(results),
        "answered_per_second": round(len(answered) / elapsed, 2),
        "whole_answer_p50_ms": percentile([s for r, st, s in results if r == "whole" and st == "200"], 0.5),
        "whole_answer_p95_ms": percentile([s for r, st, s in results if r == "whole" and st == "200"], 0.95),
        "stream_to_end_p50_ms": percentile([s for r, st, s in results if r == "stream" and st == "200"], 0.5),
        "status_counts": dict(sorted(counts.items())),
        "unexpected_errors": unexpected,
        "server_tracebacks": server_errors,
        "streams_hung_up": hung_up,
        "generations_stopped_after_hang_up": int(cancelled),
        "generated_tokens": int(metric(page, "tunesmith_generated_tokens_total")),
        "in_flight_after": metric(page, "tunesmith_in_flight"),
        "request_after_test": {"status": probe.status_code, "ms": probe_ms},
        "server_rss_mb_before": before.get("VmRSS"),
        "server_rss_mb_after": after.get("VmRSS"),
        "server_peak_rss_mb": after.get("VmHWM"),
    }
    write_results("load_test", report, provenance)  # with the host and the load before and after the test
    print(json.dumps(report, indent=2))
    problems = []
    if unexpected or server_errors:
        problems.append(f"unexpected errors: {unexpected}; server tracebacks: {server_errors} ({server_log})")
    if probe.status_code != 200 or probe_ms > 5000 or report["in_flight_after"] != 0:
        problems.append(
            f"a lock or slot stayed held: {report['request_after_test']}, in flight {report['in_flight_after']}"
        )
    if problems:
        sys.exit("; ".join(problems))


if __name__ == "__main__":
    main()
