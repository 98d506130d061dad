"""Benchmark evaluation through lm-evaluation-harness: a multiple-choice JSONL file, an lm-eval task YAML pointing at
local files, or the built-in `capitals` probe, scored by lm-eval's own log-likelihood multiple-choice scoring on a
model as tunesmith loaded it (an adapter answers through its adapter; nothing is merged), base beside tuned.

Each JSONL file (and the probe) becomes an lm-eval task YAML with `dataset_path: json` (lm-eval's "Using Local
Datasets"), written beside the scores, so `lm_eval --tasks NAME --include_path FOLDER` reproduces them. Nothing
is downloaded: lm-eval's own task catalogue is not loaded, only the tasks named here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import yaml

from tunesmith.errors import TunesmithError
from tunesmith.evaluation import capitals
from tunesmith.evaluation.multiple_choice import Question, read_questions

PROMPT = "Question: {{question}}\nAnswer:"  # each choice is scored as the continuation " <choice>"
SCORING = (
    "lm-evaluation-harness multiple_choice: each choice's log-likelihood after the prompt; acc picks the highest, "
    "acc_norm the highest per byte of the choice; standard errors are lm-eval's"
)
SHOWN = ("acc", "acc_norm")  # what the table prints; every metric lm-eval returns is recorded


@dataclass(frozen=True)
class Benchmark:
    """One lm-eval task: its name, what the user named, and the folder lm-eval reads its YAML from."""

    name: str
    source: str
    include_path: Path


class _AnyTagLoader(yaml.SafeLoader):
    """lm-eval YAMLs may carry `!function` tags; reading the task name must not fail on them."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_name(path: Path) -> str:
    """An lm-eval task name from a file name: lower case, letters, digits and underscores."""
    return re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "multiple_choice"


def yaml_task_name(path: Path) -> str:
    try:
        spec = yaml.load(path.read_text(encoding="utf-8"), Loader=_AnyTagLoader)
    except yaml.YAMLError as exc:
        raise TunesmithError(f"{path}: not a readable lm-eval task YAML ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
        raise TunesmithError(
            f"{path}: an lm-eval task YAML needs a `task:` name (groups are not supported here)"
        )
    return spec["task"]


def _kind(spec: str) -> str:
    if spec == capitals.NAME:
        return "builtin"
    suffix = Path(spec).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    raise TunesmithError(
        f"benchmark {spec!r}: give a multiple-choice .jsonl file, an lm-eval task .yaml pointing at local files, "
        f"or {capitals.NAME!r} (the built-in general-knowledge probe)"
    )


def check_benchmarks(specs: list[str]) -> None:
    """Read every benchmark named (each bad multiple-choice row named by file:line) before a model is loaded."""
    names: dict[str, str] = {}
    for spec in specs:
        kind = _kind(spec)
        if kind == "jsonl":
            read_questions(spec)
            name = task_name(Path(spec))
        elif kind == "yaml":
            if not Path(spec).is_file():
                raise TunesmithError(f"{spec}: no such lm-eval task YAML")
            name = yaml_task_name(Path(spec))
        else:
            name = capitals.NAME
        if name in names:
            raise TunesmithError(
                f"benchmarks {names[name]!r} and {spec!r} share the task name {name!r}; rename one"
            )
        names[name] = spec


def write_task(name: str, questions: list[Question], folder: Path) -> Path:
    """NAME.jsonl (answers as indices) and NAME.yaml, the lm-eval task that reads it; returns the YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = folder / f"{name}.jsonl"
    rows.write_text("".join(_json_line(q.to_row()) for q in questions), encoding="utf-8")
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(rows.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": PROMPT,
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in SHOWN],
        "metadata": {"version": 1.0},
    }
    target = folder / f"{name}.yaml"
    target.write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")
    return target


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def prepare_benchmarks(specs: list[str], folder: Path) -> list[Benchmark]:
    """The lm-eval tasks for `specs`; JSONL files and the built-in probe are written as task YAMLs into `folder`."""
    check_benchmarks(specs)
    prepared = []
    for spec in specs:
        kind = _kind(spec)
        if kind == "yaml":
            path = Path(spec).resolve()
            prepared.append(Benchmark(yaml_task_name(path), str(path), path.parent))
            continue
        if kind == "builtin":
            name, questions, source = capitals.NAME, capitals.capital_questions(), capitals.source()
        else:
            name, questions, source = task_name(Path(spec)), read_questions(spec), str(Path(spec).resolve())
        write_task(name, questions, folder)
        prepared.append(Benchmark(name, source, folder.resolve()))
    return prepared


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise TunesmithError(
            "benchmarks are scored by lm-evaluation-harness: pip install 'tunesmith[evaluation]'"
        ) from None
    return lm_eval, HFLM, TaskManager


def score_benchmarks(model, tokenizer, benchmarks: list[Benchmark], batch_size: int) -> dict[str, dict]:
    """lm-eval's scores of `model` on each benchmark: {task: {metric: value, metric_stderr: value, examples}}."""
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    include = sorted({str(b.include_path) for b in benchmarks})
    # include_defaults=False: only the tasks named here are indexed (lm-eval's catalogue takes ~30 s to scan)
    manager = TaskManager(include_path=include, include_defaults=False)
    missing = [b.name for b in benchmarks if b.name not in manager.all_tasks]
    if missing:
        raise TunesmithError(f"lm-eval found no task named {missing} under {include}")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[b.name for b in benchmarks], task_manager=manager, log_samples=False
    )
    return {b.name: task_scores(results, b.name) for b in benchmarks}


def task_scores(results: dict, name: str) -> dict:
    """One task's numbers from lm-eval's results: `acc,none` -> acc, with acc_stderr beside it."""
    raw = results["results"][name]
    scores: dict = {}
    for key, value in raw.items():
        metric, _, kept_by = key.partition(",")
        if not kept_by or metric.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        label = metric if kept_by == "none" else key
        stderr = raw.get(f"{metric}_stderr,{kept_by}")
        scores[label] = float(value)
        scores[f"{label}_stderr"] = float(stderr) if isinstance(stderr, (int, float)) else None
    scores["examples"] = int(results["n-samples"][name]["effective"])
    return scores


def comparison(benchmarks: list[Benchmark], base: dict[str, dict], tuned: dict[str, dict]) -> dict:
    """What run.json and evaluation.json record: per task its source, base and tuned scores and the difference."""
    tasks = {}
    for benchmark in benchmarks:
        before, after = base[benchmark.name], tuned[benchmark.name]
        metrics = [k for k in after if not k.endswith("_stderr") and k != "examples" and k in before]
        tasks[benchmark.name] = {
            "source": benchmark.source,
            "examples": after["examples"],
            "base": before,
            "tuned": after,
            "difference": {k: round(after[k] - before[k], 6) for k in metrics},
        }
    return {"lm_eval_version": version("lm-eval"), "scoring": SCORING, "tasks": tasks}


def _with_error(scores: dict, metric: str) -> str:
    stderr = scores.get(f"{metric}_stderr")
    return f"{scores[metric]:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def table(record: dict) -> str:
    """The printed table: task, metric, base ± stderr, tuned ± stderr, difference."""
    lines = [f"{'benchmark':<20}{'metric':<10}{'base':>18}{'tuned':>18}{'difference':>12}"]
    for name, task in record["tasks"].items():
        for metric in task["difference"]:
            if metric in SHOWN or len(task["difference"]) == 1:
                lines.append(
                    f"{name:<20}{metric:<10}{_with_error(task['base'], metric):>18}"
                    f"{_with_error(task['tuned'], metric):>18}{task['difference'][metric]:>+12.4f}"
                )
    return "\n".join(lines)


def knowledge_kept(record: dict) -> str | None:
    """'knowledge kept: base X% -> tuned Y%' from the built-in probe, when it was scored."""
    task = record.get("tasks", {}).get(capitals.NAME)
    if not task:
        return None
    base, tuned = task["base"]["acc"], task["tuned"]["acc"]
    return (
        f"knowledge kept ({task['examples']} capital-city questions, lm-eval acc): "
        f"base {base:.1%} -> tuned {tuned:.1%} ({100 * (tuned - base):+.1f} points)"
    )


class BenchmarkCheck:
    """eval.benchmarks during training: the model scored before its first step (the base) and after its last."""

    def __init__(self, specs: list[str], folder: Path, tokenizer, batch_size: int):
        self.benchmarks = prepare_benchmarks(specs, folder)
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def score(self, model) -> dict[str, dict]:
        return score_benchmarks(model, self.tokenizer, self.benchmarks, self.batch_size)

    def compare(self, base: dict[str, dict], tuned: dict[str, dict]) -> dict:
        return comparison(self.benchmarks, base, tuned)


def check_trainable(specs: list[str], task) -> None:
    """eval.benchmarks, refused for a task whose model is not a language model, and read before training."""
    if not specs:
        return
    if "generate" not in task.verbs:
        raise TunesmithError(
            f"eval.benchmarks: a {task.name} model is not a language model; lm-eval's multiple-choice scoring "
            "needs one that generates text (causal-lm, preference, seq2seq)"
        )
    check_benchmarks(specs)
