"""Tool use on the embedded model: `tunesmith quickstart tools` measured. SmolLM2-135M-Instruct tuned with
tunesmith's defaults (LoRA) on the offline tool data of src/tunesmith/quickstart_tools.py, then scored base vs tuned on its held-out test split by `tunesmith eval
--baseline` (evaluation/tool_calls.py: right function, JSON-equal arguments, schema-valid arguments, no call where
none is due, and the answer after the tool's result: the reference sentence, and every value the result returned
stated), overall and per function of the test split (from the evaluation's tool_turns.jsonl).

SmolLM2's own chat template does not render tools, so training, evaluation and serving use tunesmith's tools
template (docs/tools.md). The test split holds out argument values, countries and the whole `convert_weight`
function (src/tunesmith/quickstart_tools.py).

Writes bench/results/tool_demo.json (with host, load, date, command and versions: bench/results_file.py) and
DIR/evaluation.json. Training takes long on a CPU: run it on a quiet host.
Run: .venv/bin/python bench/tool_demo.py [--workdir DIR] [--train 150] [--test 40] [--epochs 2] (the quickstart's sizes)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from results_file import Provenance, write_results
from tunesmith import api, quickstart_tools
from tunesmith.data.tool_output import read_answer

SCORES = (
    "tool_turns",
    "tool_name_accuracy",
    "tool_arguments_exact",
    "tool_arguments_valid",
    "no_call_accuracy",
    "answer_after_tool_accuracy",
    "answer_after_tool_grounded",
)


def per_function(turns: list[dict]) -> dict:
    """Right function and exact arguments per function called in the reference (its held-out values, countries or
    the held-out function itself), tuned and base, from the evaluation's tool_turns.jsonl records."""
    table: dict[str, dict] = {}
    for record in turns:
        if not record["functions"]:
            continue
        due = record["reference_calls"]
        cell = table.setdefault(record["functions"][0], {"turns": 0, "tuned": [0, 0], "base": [0, 0]})
        cell["turns"] += 1
        for side, output in (("tuned", record["output"]), ("base", record["base_output"])):
            calls = read_answer(output).calls
            cell[side][0] += [c.name for c in calls] == [name for name, _ in due]
            cell[side][1] += [[c.name, c.arguments] for c in calls] == due
    return {
        name: {
            "turns": cell["turns"],
            "held_out": "the whole function"
            if name == quickstart_tools.HELD_OUT_FUNCTION
            else "argument values",
        }
        | {
            f"{side}_{score}": round(100 * cell[side][i] / cell["turns"], 2)
            for side in ("tuned", "base")
            for i, score in enumerate(("name_accuracy", "arguments_exact"))
        }
        for name, cell in sorted(table.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--train", type=int, default=quickstart_tools.TRAIN_ROWS)
    parser.add_argument("--test", type=int, default=quickstart_tools.TEST_ROWS)
    parser.add_argument("--epochs", type=float, default=quickstart_tools.EPOCHS)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tunesmith-tools-"))
    if (workdir / "data").exists() or (workdir / "config.yaml").exists():
        parser.error(
            f"{workdir} already holds demo data or a config (kept, not measured again): give a new --workdir"
        )
    provenance = Provenance.begin()
    config = quickstart_tools.prepare(workdir, args.train, args.test, args.epochs)
    started = time.perf_counter()
    summary = api.train(config)
    trained = time.perf_counter() - started
    result = api.evaluate(summary["run_dir"], baseline=True)
    (workdir / "evaluation.json").write_text(json.dumps(result, indent=2))
    lines = (Path(result["folder"]) / result["tool_turns_file"]).read_text(encoding="utf-8").splitlines()
    record = {
        "run": summary["run_dir"],
        "train_rows": args.train,
        "test_rows": args.test,
        "epochs": args.epochs,
        "train_seconds": round(trained, 1),
        "split": result["split"],
        "tuned": {name: result["tuned"].get(name) for name in SCORES},
        "base": {name: (result["baseline"] or {}).get(name) for name in SCORES},
        "per_function": per_function([json.loads(line) for line in lines]),
    }
    print(write_results("tool_demo", record, provenance))


if __name__ == "__main__":
    main()
