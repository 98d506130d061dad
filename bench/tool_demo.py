"""Tool use on the embedded model: SmolLM2-135M-Instruct tuned with tunesmith's defaults (LoRA) on the offline tool
data of bench/tool_demo_data.py, then scored base vs tuned on its held-out test split by `tunesmith eval
--baseline` (evaluation/tool_calls.py: right function, JSON-equal arguments, schema-valid arguments, no call where
none is due).

SmolLM2's own chat template does not render tools, so training, evaluation and serving use tunesmith's tools
template (docs/tools.md). The test split holds out argument values, countries and the whole `convert_weight`
function (bench/tool_demo_data.py).

Writes bench/results/tool_demo.json (with host, load, date, command and versions: bench/results_file.py) and
DIR/evaluation.json. Training takes long on a CPU: run it on a quiet host.
Run: .venv/bin/python bench/tool_demo.py [--workdir DIR] [--train 600] [--test 120] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import tool_demo_data
from results_file import Provenance, write_results
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.quickstart import smollm2_folder

SCORES = (
    "tool_turns",
    "tool_name_accuracy",
    "tool_arguments_exact",
    "tool_arguments_valid",
    "no_call_accuracy",
)


def config(workdir: Path, data: dict[str, Path], epochs: float) -> dict:
    return {
        "model": {"name": str(smollm2_folder())},
        "data": {
            "train_file": str(data["train"]),
            "test_file": str(data["test"]),
            "validation_ratio": 0.1,
            "max_length": 1024,
        },
        "method": {"name": "lora"},
        "train": {"epochs": epochs},
        "eval": {"generations": 10_000, "max_new_tokens": 96},
        "output": {"dir": str(workdir / "runs"), "name": "tools"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=120)
    parser.add_argument("--epochs", type=float, default=2)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tunesmith-tools-"))
    provenance = Provenance.begin()
    data = tool_demo_data.write(workdir / "data", args.train, args.test, seed=0)
    started = time.perf_counter()
    summary = api.train(config_from_dict(config(workdir, data, args.epochs)))
    trained = time.perf_counter() - started
    result = api.evaluate(summary["run_dir"], baseline=True)
    (workdir / "evaluation.json").write_text(json.dumps(result, indent=2))
    record = {
        "run": summary["run_dir"],
        "train_rows": args.train,
        "test_rows": args.test,
        "epochs": args.epochs,
        "train_seconds": round(trained, 1),
        "split": result["split"],
        "tuned": {name: result["tuned"].get(name) for name in SCORES},
        "base": {name: (result["baseline"] or {}).get(name) for name in SCORES},
    }
    print(write_results("tool_demo", record, provenance))


if __name__ == "__main__":
    main()
