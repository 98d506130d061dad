"""The Task interface: everything that differs between kinds of training sits behind it, in one object per task.

Code outside tasks/ asks the run's Task (`tunesmith.registry.get_task(cfg.task)`) and never compares task
names. A new task is one module that subclasses Task, fills in what differs, and ends with one
`register_task(...)` line; docs/architecture.md has the checklist.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from tunesmith.config import Config, DataConfig
from tunesmith.errors import TunesmithError
from tunesmith.run_folder import RunFolder, RunSummary
from tunesmith.tasks.common import bad_rows_error


@dataclass(frozen=True)
class Rung:
    """One step of a task's plan ladder (`tunesmith plan`): a method and its size, cheapest first."""

    label: str  # e.g. "lora r=8 on q_proj, v_proj"
    settings: dict[str, Any] = field(default_factory=dict)  # dotted config keys -> values
    min_epochs: float = 1.0  # the fewest epochs worth running it for (0: a fitting step, no epochs)
    why: str = ""
    when_short_of_memory: bool = False  # only tried when no other rung fits the memory (e.g. qlora)


def head_rungs(head: str) -> list[Rung]:
    """The ladder of a pretrained body under a new head (classification, token classification), cheapest first."""
    return [
        Rung(
            "last_n 2",
            {"method.name": "last_n", "method.last_n": 2},
            2.0,
            f"the last 2 blocks and the {head} train: a fraction of full's cost",
        ),
        Rung(
            "lora r=8",
            {"method.name": "lora", "method.lora.r": 8, "method.lora.alpha": 16},
            2.0,
            f"adapters on every linear layer and the new {head}: every block adapts, few weights train",
        ),
        Rung(
            "full",
            {"method.name": "full"},
            2.0,
            "every weight trains: the best accuracy in the classification benchmark when there is time for 2+ epochs",
        ),
    ]


class Task:
    name: str = ""
    summary: str = ""  # one line for docs and `tunesmith init`
    starter: str = ""  # the file under tunesmith/starters/ that `tunesmith init` prints for this task
    provides: frozenset[str] = frozenset()  # capabilities a method may need (methods/__init__.py `needs`)
    # Why data.mix / data.replay do not apply (tasks that provide "replay" train extra rows with their own loss).
    no_replay: str = "extra rows would need this task's labels, which general text does not carry"
    default_overflow: str = "drop"  # what data.on_overflow: auto means for this task
    verbs: frozenset[str] = frozenset()  # run verbs besides train/eval/report/export/push/serve
    pipeline_tag: str = ""  # the hub's pipeline tag in the model card
    auto_class: str = "AutoModel"  # the transformers Auto class that reloads an exported folder
    sweep_metrics: tuple[str, ...] | None = None  # the only metrics a sweep may optimize (None: any logged)
    scores_test_before: bool = True  # the untouched model is scored on the test split before training
    chooses_defaults: bool = True  # unset training settings are chosen for the data size (tasks.defaults)
    plan_kind: str = "generator"  # tunesmith.tasks.defaults kind: epochs and learning rates it plans with
    selection_metric: tuple[str, str] | None = None  # (train.metric, why) a classifier-kind task chooses by
    # How `tunesmith plan DATA` recognizes this task's data: table fields that mark it, or, for a folder, file
    # suffixes it holds (and suffixes it must also hold). The best match wins; no match means the default task.
    table_fields: frozenset[str] = frozenset()
    folder_suffixes: frozenset[str] = frozenset()
    folder_needs: frozenset[str] = frozenset()

    # -- config and data ----------------------------------------------------------------------------------
    def config_problems(self, cfg: Config) -> list[str]:
        """What in `cfg` this task cannot do, one line each naming the key (checked when the config loads)."""
        return []

    def check_data(self, data: DataConfig):
        """Read and validate every row (CheckedData: .train, .validation, .problems, .report)."""
        raise NotImplementedError

    def validated_data(self, cfg: Config):
        """check_data, and with on_error: stop, bad rows end the run before anything heavy starts."""
        checked = self.check_data(cfg.data)
        if checked.problems and cfg.data.on_error == "stop":
            raise bad_rows_error(checked)
        return checked

    # -- the recipe ---------------------------------------------------------------------------------------
    def train(self, cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
        """The one recipe (tasks/pipeline.py) over this task's hooks below."""
        from tunesmith.tasks import pipeline

        return pipeline.train(self, cfg, default_name, resume, callbacks)

    # -- the pipeline's hooks, in the order it calls them ----------------------------------------------------
    def prepare(self, cfg: Config, checked, model_path: str, cache_dir):
        """The checked splits made ready for the trainer: a tasks.pipeline.Prepared."""
        raise NotImplementedError

    def print_data_summary(self, report: dict) -> None:
        """The data report's headline lines on the screen."""

    def build_model(self, cfg: Config, model_path: str, method, data):
        """The base model loaded for this task, with the method applied."""
        raise NotImplementedError

    def build_trainer(
        self, cfg: Config, run: RunFolder, model, data, precision, callbacks, resuming, checkpointing
    ):
        """(trainer, tunesmith.training.callbacks.TokenCounter) for the prepared data."""
        raise NotImplementedError

    def summary_fields(self, cfg: Config, data) -> dict:
        """This task's own RunSummary fields, written when training starts."""
        return {}

    def forgetting_probe(self, cfg: Config, model_path: str, data):
        """The forgetting check's probe (score, describe, drift, describe_drift), or None without eval.reference."""
        return None

    def before_training(self, run: RunFolder, model, data, summary) -> None:
        """The task's own measurements of the untouched model (written to run.json); nothing by default."""

    def after_training(self, run: RunFolder, model, data, result: dict) -> None:
        """The task's own measurements of the final weights, added to `result`; nothing by default."""

    def samples(self, cfg: Config, data) -> list:
        """Held-out inputs answered before and after training (samples.jsonl); [] for tasks that do not generate."""
        return []

    def generate(self, model, data, samples: list) -> list[str]:
        """The model's answers to `samples`."""
        raise NotImplementedError

    def write_samples(self, run: RunFolder, data, samples: list, tuned: list[str]) -> None:
        """samples.jsonl: each sample, its reference, the base model's answer (samples_base.json) and the tuned one."""
        raise NotImplementedError

    def training_context(self, run: RunFolder, model, precision: str, method):
        """What the training loop runs inside (e.g. frozen weights held in bf16); nothing by default."""
        return contextlib.nullcontext()

    def solver(self, cfg: Config, model_path: str, model, method, data):
        """A tasks.pipeline.Solver when this run fits without gradient steps (features, a solved head), else None."""
        return None

    def validation_scores(self, trainer, model, data, final: dict) -> dict:
        """The final weights' validation scores; `final` is the Trainer's evaluation of them (eval_* keys)."""
        return {
            k.removeprefix("eval_"): v
            for k, v in final.items()
            if k.startswith("eval_") and "runtime" not in k
        }

    def save(self, run: RunFolder, trainer, data) -> None:
        """The final weights (and what reloads them) into run.model_dir."""
        raise NotImplementedError

    def score(self, model, data, split: str) -> dict:
        """The model's headline scores on one prepared split ("validation" or "test")."""
        raise NotImplementedError

    def describe_scores(self, scores: dict, before: dict | None) -> str:
        """One line for a split's scores (and the untouched model's, when measured)."""
        return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))

    def collapse_alarm(self, data, validation: dict | None, generated: list[str]) -> dict | None:
        """The collapse alarm from the final validation scores and the tuned model's sample answers, or None."""
        return None

    def recognizes(self, fields: set[str] | None, suffixes: set[str] | None) -> int:
        """How well a table's fields (or a folder's file suffixes) match this task's data: 0 not at all."""
        if fields is not None:
            return len(self.table_fields) if self.table_fields and self.table_fields <= fields else 0
        if suffixes and suffixes & self.folder_suffixes and self.folder_needs <= suffixes:
            return 1 + len(self.folder_needs)
        return 0

    def plan_ladder(self, cfg: Config) -> list[Rung]:
        """The methods `tunesmith plan` chooses among for this task, cheapest first (the richest that fits wins)."""
        return [
            Rung(
                "lora r=8",
                {"method.name": "lora", "method.lora.r": 8, "method.lora.alpha": 16},
                1.0,
                "adapters on every linear layer: a small fraction of the weights train, the base stays as it was",
            ),
            Rung(
                "full",
                {"method.name": "full"},
                1.0,
                "every weight trains: the most capacity, the most memory",
            ),
        ]

    # -- a finished run -------------------------------------------------------------------------------------
    def load_run(self, run: RunFolder, adapter_name: str = "default", into: Any = None):
        """The run's tuned model, ready to answer (into: a peft model already holding the same base)."""
        raise NotImplementedError

    def predict(self, run: RunFolder, source, output, batch_size: int) -> dict:
        """`tunesmith predict`: label a table or folder of new inputs (tasks with "predict" in verbs)."""
        raise NotImplementedError

    def prediction_inputs(self, cfg: Config, examples: list) -> tuple[list[dict], list[str]] | None:
        """`examples` as the rows of a table `predict` reads with `cfg`, and the one label expected for each
        (`tunesmith plan` compares two lengths on them); None where predictions are not one label per row."""
        return None

    def evaluate(self, run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
        """`tunesmith eval`: {"task", "examples", "tuned", "baseline", optionally "generated"}."""
        raise NotImplementedError

    def final_metric(self, summary: RunSummary, name: str) -> float | None:
        """The run's final validation value of metric `name` (for sweeps), or None when it has none."""
        return (summary.validation or {}).get(name)

    def report_figures(self, cfg: Config, data_report: dict, records: list[dict], evaluation) -> dict:
        """Task-specific figures for report.html: element id -> PNG data URI (empty ones are dropped)."""
        return {}

    def report_section(self) -> Path | None:
        """This task's section of report.html: `report.html.j2` beside the task's module (its package), which the
        run page includes with the page's own variables (summary, samples, evaluation, figures, cfg); None: the
        page shows samples.jsonl, if any, in its generic generations table."""
        partial = Path(inspect.getfile(type(self))).with_name("report.html.j2")
        return partial if partial.is_file() else None

    def routes(self) -> ModuleType | None:
        """The module of this task's HTTP routes (tasks/<name>/routes.py: GROUP, PATHS, add_routes(app, context)
        over tunesmith.http), imported when a server loads one of its runs. None: no route of its own; a run
        whose handle is a Generator is answered by the server's chat and completions routes, any other by none."""
        return None

    def intended_use(self) -> str:
        """The model card's 'Intended use' sentence."""
        return "The task and data described above."

    def exportable(self, run: RunFolder):
        """The run as a tunesmith.models.exportable.Exportable (merged fp32 model, probes, validation)."""
        raise TunesmithError(f"export: {self.name} runs cannot be exported yet")

    # -- helpers for the verbs -------------------------------------------------------------------------------
    def require(self, verb: str, run: RunFolder) -> None:
        """Refuse a verb this task's runs do not answer, naming the verbs that fit."""
        if verb not in self.verbs:
            instead = " or ".join(f"`tunesmith {v}`" for v in sorted(self.verbs)) or "`tunesmith eval`"
            raise TunesmithError(f"{verb}: {run.path} is a {self.name} run; use {instead} for it")
