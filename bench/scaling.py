"""Scaling: real tokens/s and peak memory of tunesmith's default LoRA fine-tune of SmolLM2-135M against sequence
length (128 to 2048 tokens) and against data set size; writes bench/results/scaling.{json,md} and two PNG curves.

Each point runs in its own process (its peak resident memory is its own): plain-text examples of BBC articles,
cut to exactly the sequence length (loss on every token), batch 1, a few optimizer steps after one warm-up step.
Run: .venv/bin/python bench/scaling.py [--lengths 128 256 512 1024 2048] [--sizes 250 1000 2000] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import Provenance, describe, write_results

RESULTS = Path(__file__).parent / "results"


def articles(count: int, joined: int) -> list[str]:
    """`count` texts of `joined` consecutive BBC articles each (six make every text longer than 2048 tokens)."""
    from tunesmith import quickstart

    files = sorted(quickstart.bbc_folder().glob("*/*.txt"))[: count * joined]
    texts = [" ".join(f.read_text(encoding="latin-1").split()) for f in files]
    return [" ".join(texts[i : i + joined]) for i in range(0, len(texts) - joined + 1, joined)][:count]


def prepare_seconds(raw: dict) -> tuple[float, float]:
    """Reading + validating + tokenizing the data: cold (nothing cached), then again (the cache keyed by data,
    settings and tokenizer is hit): what moving data preparation off the training loop saves each run."""
    from tunesmith.config import config_from_dict
    from tunesmith.data.prepare import check_data, tokenize_data
    from tunesmith.data.templates import Renderer
    from tunesmith.models.loading import default_cache_dir, load_tokenizer

    cfg = config_from_dict(raw)
    renderer = Renderer(load_tokenizer(cfg.model.name, cfg.model), cfg.data.template)
    timings = []
    for _ in range(2):
        started = time.time()
        tokenize_data(check_data(cfg.data), cfg.data, renderer, default_cache_dir(cfg.output.cache_dir))
        timings.append(round(time.time() - started, 2))
    return timings[0], timings[1]


def point(length: int, size: int, joined: int, steps: int, folder: Path) -> dict:
    """One measurement, in this process."""
    from tunesmith import api, quickstart
    from tunesmith.config import ModelConfig, config_from_dict
    from tunesmith.models.loading import default_cache_dir, resolve_model

    model_dir = resolve_model(ModelConfig(name=str(quickstart.smollm2_folder())), default_cache_dir())
    data = folder / "train.jsonl"
    texts = articles(size, joined)
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    raw = {
        "model": {"name": model_dir},
        "data": {
            "train_file": str(data),
            "format": "text",
            "loss_on": "all",
            "validation_ratio": 0,
            "max_length": length,
            "on_overflow": "truncate",
        },
        "method": {"name": "lora", "lora": {"r": 8, "alpha": 32, "target_modules": ["q_proj", "v_proj"]}},
        "train": {
            "batch_size": 1,
            "max_steps": steps,
            "learning_rate": 2e-4,
            "warmup": 0,
            "logging_steps": 1,
            "precision": "fp32",
            "save_steps": 10_000,
        },
        "eval": {"samples": 0},
        "output": {"dir": str(folder / "runs"), "name": "point", "cache_dir": str(folder / "cache")},
    }
    cold, cached = prepare_seconds(raw)
    summary = api.train(config_from_dict(raw))
    records = [
        json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    # Steady state: tokens/s from the second logged step on (the first pays for one-time allocations).
    timed = [r for r in records if "loss" in r and "time" in r]
    steady = (len(timed) - 1) * length / (timed[-1]["time"] - timed[0]["time"]) if len(timed) > 2 else None
    report = json.loads((Path(summary["run_dir"]) / "data_report.json").read_text())
    return {
        "length": length,
        "size": size,
        "examples": report["train_examples"],
        "truncated": report["over_max_length"]["train"]["count"],
        "prepare_seconds_cold": cold,
        "prepare_seconds_cached": cached,
        "tokens_per_second": summary["tokens_per_second"],
        # Valid only when every example was cut to exactly `length` tokens.
        "steady_tokens_per_second": round(steady, 1)
        if steady and report["over_max_length"]["train"]["count"] == report["train_examples"]
        else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_point(length: int, size: int, joined: int, steps: int) -> dict | None:
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            __file__,
            "--point",
            str(length),
            str(size),
            str(joined),
            "--steps",
            str(steps),
            "--folder",
            folder,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        print(f"length {length}, size {size}: failed\n{done.stderr[-2000:]}")
        return None
    return json.loads(line.removeprefix("RESULT "))


def plot(rows: list[dict], x: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, speed = plt.subplots(figsize=(7, 3.6))
    xs = [r[x] for r in rows]
    speed.plot(
        xs, [r["steady_tokens_per_second"] or r["tokens_per_second"] for r in rows], "o-", color="tab:blue"
    )
    speed.set_xscale("log", base=2)
    speed.set_xlabel("sequence length (tokens)" if x == "length" else "training examples")
    speed.set_ylabel("real tokens/s", color="tab:blue")
    memory = speed.twinx()
    memory.plot(xs, [r["peak_rss_mb"] for r in rows], "s--", color="tab:red")
    memory.set_ylabel("peak RSS (MB)", color="tab:red")
    speed.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 2000])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--point", type=int, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument(
        "--from-json", action="store_true", help="rebuild the table and plots from scaling.json"
    )
    args = parser.parse_args()
    if args.from_json:
        write_outputs(json.loads((RESULTS / "scaling.json").read_text()))
        return
    if args.point:
        print("RESULT " + json.dumps(point(*args.point, args.steps, Path(args.folder))), flush=True)
        return
    provenance = Provenance.begin()
    by_length = [r for r in (run_point(n, 64, 8, args.steps) for n in args.lengths) if r]
    for r in by_length:
        print(
            f"length {r['length']}: {r['steady_tokens_per_second']} tok/s steady, peak {r['peak_rss_mb']} MB",
            flush=True,
        )
    by_size = [r for r in (run_point(256, n, 1, args.steps) for n in args.sizes) if r]
    for r in by_size:
        print(
            f"size {r['size']}: data preparation {r['prepare_seconds_cold']} s cold, {r['prepare_seconds_cached']} s cached, {r['tokens_per_second']} tok/s, peak {r['peak_rss_mb']} MB",
            flush=True,
        )
    result = {"steps": args.steps, "by_length": by_length, "by_size": by_size}
    write_outputs(json.loads(write_results("scaling", result, provenance).read_text()))


def write_outputs(result: dict) -> None:
    """PNG curves and the markdown tables; `--from-json` rebuilds them from bench/results/scaling.json."""
    by_length, by_size = result["by_length"], result["by_size"]
    plot(by_length, "length", RESULTS / "scaling_length.png", "tokens/s and peak memory vs sequence length")
    plot(by_size, "size", RESULTS / "scaling_size.png", "tokens/s and peak memory vs data set size")
    # Files written before bench/results_file.py name only the threads and torch version.
    host = (
        describe(result["meta"])
        if "meta" in result
        else f"{result['threads']} threads, torch {result['torch']}"
    )
    lines = [
        f"SmolLM2-135M-Instruct, LoRA r=8 q/v, fp32, batch 1, {result['steps']} steps per point; {host}.",
        "",
        "| sequence length | steady real tokens/s | peak RSS MB |",
        "|---|---|---|",
        *[f"| {r['length']} | {r['steady_tokens_per_second']} | {r['peak_rss_mb']} |" for r in by_length],
        "",
        "| training examples (up to 256 tokens) | data preparation, cold s | cached s | real tokens/s | peak RSS MB |",
        "|---|---|---|---|---|",
        *[
            f"| {r['examples']} | {r['prepare_seconds_cold']} | {r['prepare_seconds_cached']} | "
            f"{r['tokens_per_second']} | {r['peak_rss_mb']} |"
            for r in by_size
        ],
    ]
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
