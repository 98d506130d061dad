"""Hyperparameter search with Optuna: every trial is an ordinary run, scored on validation and pruned early.

Workers share one study through its storage (SQLite in the sweep folder by default): the same command in
two terminals makes two workers, and running it again after a crash resumes the study where it stopped.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil
import sqlalchemy
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState
from pydantic import BaseModel
from transformers import TrainerCallback

from tunesmith.config import (
    Config,
    SearchDimension,
    SweepConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    read_yaml,
    set_key,
)
from tunesmith.errors import TunesmithError
from tunesmith.registry import get_task
from tunesmith.report.sweep_report import best_record, write_sweep_report
from tunesmith.run_folder import RunFolder, RunSummary

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# The target counts running trials too, so N workers together start N trials, not N each.
COUNTED = (*FINISHED, TrialState.RUNNING)
WRAP_UP_SECONDS = 15  # --time: kept for writing trials.json, best_config.yaml and the report
MAX_FAILURES_IN_A_ROW = 5  # a sweep whose every trial crashes stops instead of looping forever


@dataclass
class Sweep:
    """What every worker needs, resolved once from the config file."""

    raw: dict[str, Any]  # the YAML with --set overrides applied, sweep section included
    base: Path  # relative paths in the YAML are relative to the config's folder
    settings: SweepConfig
    seed: int
    output_dir: str
    study_name: str
    folder: Path
    storage_url: str
    metric: str
    direction: str
    target: int

    @property
    def space(self) -> dict[str, SearchDimension]:
        return self.settings.space


def run_sweep(
    config_path: Path,
    overrides: list[str],
    trials: int | None,
    storage: str | None,
    study_name: str | None,
    time_limit: float | None = None,
) -> dict:
    """Run trials until the study holds the target count (or, with `time_limit` seconds, until no further trial
    fits), then write best_config.yaml, trials.json and the report."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # we print one line per trial ourselves
    sweep = plan_sweep(config_path, overrides, trials, storage, study_name)
    study = open_study(sweep)
    retry_killed_trials(study)
    if study.get_trials(deepcopy=False):
        print(f"resuming study {sweep.study_name}: {count(study, FINISHED)} of {sweep.target} trials done")
    else:
        print(
            f"study {sweep.study_name}: {sweep.target} trials, {sweep.direction} {sweep.metric}, storage {sweep.storage_url}"
        )
    failures_in_a_row, last_error = 0, ""
    deadline = time.time() + time_limit if time_limit else None
    durations: list[float] = []
    while count(study, COUNTED) < sweep.target:
        time_left = None
        if deadline is not None:
            time_left = deadline - time.time() - WRAP_UP_SECONDS
            typical = sorted(durations)[len(durations) // 2] if durations else 0.0
            if time_left <= 0 or (durations and typical > time_left):
                print(
                    f"sweep: {max(0.0, time_left):.0f} s of --time left and a trial takes about {typical:.0f} s: "
                    f"no more trials ({len(durations)} ran in this budget)"
                )
                break
        started = time.time()
        trial = run_trial(study, sweep, time_left)
        durations.append(time.time() - started)
        failed = trial.state == TrialState.FAIL
        failures_in_a_row = failures_in_a_row + 1 if failed else 0
        last_error = trial.user_attrs.get("error", "") if failed else last_error
        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            result = write_outputs(study, sweep)
            raise TunesmithError(
                f"sweep stopped: {failures_in_a_row} trials in a row failed (last: {last_error}); see {result['trials_file']}"
            )
    return write_outputs(study, sweep)


# -- planning: everything checked before the first trial ------------------------------------------------


def plan_sweep(
    config_path: Path,
    overrides: list[str],
    trials: int | None,
    storage: str | None,
    study_name: str | None,
) -> Sweep:
    cfg = load_config(config_path, overrides)
    if cfg.sweep is None or not cfg.sweep.space:
        raise TunesmithError(
            f"{config_path}: sweep.space is missing or empty; add e.g. "
            "`sweep: {space: {train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}}}`"
        )
    raw = apply_overrides(read_yaml(config_path), overrides)
    base = config_path.parent.resolve()
    check_space(raw, cfg.sweep.space, base, str(config_path))
    metric = "eval_" + (cfg.sweep.metric or cfg.train.metric).removeprefix("eval_")
    allowed = get_task(cfg.task).sweep_metrics
    if allowed is not None and metric not in allowed:
        raise TunesmithError(
            f"{config_path}: sweep.metric: {cfg.task} runs are scored by {' or '.join(allowed)} only (got {metric})"
        )
    if cfg.data.validation_file is None and cfg.data.validation_ratio == 0:
        raise TunesmithError(
            f"{config_path}: a sweep scores trials on validation data; set data.validation_ratio > 0 or data.validation_file"
        )
    name = study_name or cfg.sweep.study_name or config_path.stem
    if not name or "/" in name or name in {".", ".."}:
        raise TunesmithError(f"study name {name!r}: use a plain name (no '/'), it names the sweep folder")
    target = trials if trials is not None else cfg.sweep.trials
    if target < 1:
        raise TunesmithError(f"--trials {target}: give at least 1")
    folder = Path(cfg.output.dir) / f"{name}-sweep"
    return Sweep(
        raw=raw,
        base=base,
        settings=cfg.sweep,
        seed=cfg.train.seed,
        output_dir=cfg.output.dir,
        study_name=name,
        folder=folder,
        storage_url=storage or cfg.sweep.storage or f"sqlite:///{folder / 'study.db'}",
        metric=metric,
        direction=cfg.sweep.direction or ("minimize" if metric.endswith("loss") else "maximize"),
        target=target,
    )


def check_space(raw: dict[str, Any], space: dict[str, SearchDimension], base: Path, source: str) -> None:
    """Try each dimension's edge values (or every choice) in the config: a mistyped key fails now, named."""
    for key, dimension in space.items():
        where = f"{source}: sweep.space.{key}"
        if key.split(".")[0] in {"sweep", "output"}:
            raise TunesmithError(f"{where}: the sweep sets output and sweep itself; search training settings")
        try:
            distribution(dimension)
        except ValueError as exc:
            raise TunesmithError(f"{where}: {exc}") from None
        for value in sample_values(dimension):
            try:
                cfg = config_from_dict(with_values(raw, {key: value}), base=base)
            except TunesmithError as exc:
                problems = "; ".join(line.strip() for line in exc.details) or exc.message
                raise TunesmithError(f"{where}: {key}={value!r} is not a valid config ({problems})") from None
            setting = setting_at(cfg, key)
            whole = isinstance(setting, int) and not isinstance(setting, bool)
            if whole and dimension.choices is None and not dimension.integer:
                raise TunesmithError(f"{where}: {key} takes whole numbers; add `integer: true`")


def sample_values(dimension: SearchDimension) -> list[Any]:
    if dimension.choices is not None:
        return list(dimension.choices)
    if dimension.integer:
        return [int(dimension.low), int(dimension.high)]
    return [dimension.low, dimension.high]


def setting_at(cfg: Config, key: str) -> Any:
    """The validated value of a dotted key; a mounted section (method.lora, a task's own) is read through section()."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, BaseModel) and part not in type(node).model_fields and hasattr(node, "section"):
            try:
                node = node.section(part)
            except KeyError:
                return None
        else:
            node = getattr(node, part, None)
    return node


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw config with dotted keys set to typed values, and without the sweep section."""
    result = copy.deepcopy(raw)
    result.pop("sweep", None)
    for key, value in values.items():
        set_key(result, key.split("."), value, f"sweep.space.{key}")
    return result


# -- the search space in Optuna's terms -----------------------------------------------------------------


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def encoded_choices(dimension: SearchDimension) -> list[Any]:
    """Optuna stores scalar choices only; a list choice (e.g. target_modules) is stored as its JSON text."""
    return [c if _is_scalar(c) else json.dumps(c) for c in dimension.choices or []]


def distribution(dimension: SearchDimension) -> BaseDistribution:
    if dimension.choices is not None:
        return CategoricalDistribution(encoded_choices(dimension))
    if dimension.integer:
        step = int(dimension.step or 1)
        return IntDistribution(int(dimension.low), int(dimension.high), log=dimension.log, step=step)
    return FloatDistribution(dimension.low, dimension.high, log=dimension.log, step=dimension.step)


def suggest(trial: Trial, key: str, dimension: SearchDimension) -> Any:
    """Ask the trial for this dimension's value, as the config wants it."""
    space = distribution(dimension)
    if isinstance(space, CategoricalDistribution):
        return config_value(dimension, trial.suggest_categorical(key, space.choices))
    if isinstance(space, IntDistribution):
        return trial.suggest_int(key, space.low, space.high, step=space.step, log=space.log)
    return trial.suggest_float(key, space.low, space.high, step=space.step, log=space.log)


def config_value(dimension: SearchDimension | None, stored: Any) -> Any:
    if dimension is None or dimension.choices is None:
        return stored
    return dimension.choices[encoded_choices(dimension).index(stored)]


# -- the study ------------------------------------------------------------------------------------------


def open_study(sweep: Sweep) -> optuna.Study:
    """Create the study, or load it: a second worker, or a rerun after a crash, joins the same one."""
    sweep.folder.mkdir(parents=True, exist_ok=True)
    settings = sweep.settings
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=0)
        if settings.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        storage = rdb_storage(sweep.storage_url)
        study = optuna.create_study(
            storage=storage,
            study_name=sweep.study_name,
            direction=sweep.direction,
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=sweep.seed),
            pruner=pruner,
        )
    except (
        ImportError,
        ValueError,
        RuntimeError,
        optuna.exceptions.OptunaError,
        sqlalchemy.exc.SQLAlchemyError,
    ) as exc:
        raise TunesmithError(f"sweep storage {sweep.storage_url}: cannot open it ({exc})") from None
    if study.direction.name.lower() != sweep.direction:
        raise TunesmithError(
            f"study {sweep.study_name} in {sweep.storage_url} was created to {study.direction.name.lower()}, "
            f"not {sweep.direction}; pass another --study name"
        )
    return study


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's database; workers starting together may race to create its tables, so the loser retries."""
    # Workers wait for SQLite's write lock instead of failing with "database is locked".
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for _ in range(4):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except sqlalchemy.exc.SQLAlchemyError:
            time.sleep(0.5 + random.random())  # the other worker finishes creating the schema meanwhile
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def this_process() -> dict[str, Any]:
    """Who runs a trial: a later start on this host tells a killed worker's trial from a live one's."""
    process = psutil.Process()
    return {"hostname": socket.gethostname(), "pid": process.pid, "process_started": process.create_time()}


def is_alive(pid: int, started: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE
        # After a reboot the pid may belong to another process: its start time gives it away.
        return alive and (started is None or abs(process.create_time() - started) < 1.0)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists, so the pid is taken
        return True


def retry_killed_trials(study: optuna.Study) -> None:
    """A RUNNING trial of a dead process on this host was killed: mark it failed and queue its point again."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("hostname") != host or "pid" not in attrs:
            continue
        if is_alive(attrs["pid"], attrs.get("process_started")):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, UpdateFinishedTrialError):
            continue  # another worker starting at the same moment handled it
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        if attrs.get("run_dir") and Path(attrs["run_dir"]).is_dir():
            RunFolder(Path(attrs["run_dir"])).update_summary(status="killed")
        print(f"trial {trial.number} was running in a process that died; its point is queued again")


# -- one trial ------------------------------------------------------------------------------------------


class PruningCallback(TrainerCallback):
    """Report each evaluation to the trial; stop training when the pruner says the trial is behind."""

    def __init__(self, trial: Trial, metric: str):
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None
        self.stop_reason: str | None = None  # the recipe prints it instead of its --resume hint
        self.last_value: float | None = None
        self.reported: set[int] = set()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        step = state.global_step
        value = (metrics or {}).get(self.metric)
        # Step 0 is the evaluation before training; a step is reported once (a final re-evaluation repeats it).
        if step == 0 or value is None or step in self.reported:
            return
        self.reported.add(step)
        self.last_value = float(value)
        self.trial.report(self.last_value, step)
        # At the last step there is nothing left to save: the trial completes with its value.
        if step < state.max_steps and self.trial.should_prune():
            self.pruned_at = step
            self.stop_reason = f"pruned: {self.metric} {self.last_value:.6g} trails the other trials' median"
            control.should_training_stop = True


def run_trial(study: optuna.Study, sweep: Sweep, time_left: float | None = None) -> FrozenTrial:
    """Ask the study for a point, train it as an ordinary run, tell the study how it went; with `time_left`
    the trial's own train.time_budget ends it by then (it then ran at reduced size, which best_config says)."""
    trial = study.ask()  # an enqueued point (a killed trial's retry) comes first
    for key, value in this_process().items():
        trial.set_user_attr(key, value)
    # Seeded per trial: two workers never draw the same point, and a one-worker sweep is reproducible.
    study.sampler = optuna.samplers.TPESampler(seed=sweep.seed + trial.number)
    name = f"trial-{trial.number:03d}"
    pruning = PruningCallback(trial, sweep.metric)
    try:
        values = {key: suggest(trial, key, dimension) for key, dimension in sweep.space.items()}
        cfg = trial_config(sweep, values, str(sweep.folder / "trials"), name)
        if time_left is not None:
            cfg.train.time_budget = min(cfg.train.time_budget or time_left, time_left)
        trial.set_user_attr("run_dir", str(Path(cfg.output.dir) / name))
        summary = get_task(cfg.task).train(cfg, default_name=name, callbacks=[pruning])
        trial.set_user_attr("run_dir", summary["run_dir"])
        if pruning.pruned_at is not None:
            RunFolder(Path(summary["run_dir"])).update_summary(
                status="pruned", pruned_at_step=pruning.pruned_at
            )
            trial.set_user_attr("pruned_at_step", pruning.pruned_at)
            _drop_checkpoints(summary["run_dir"], sweep)
            print(f"trial {trial.number}: {_describe(trial.params)} -> pruned at step {pruning.pruned_at}")
            return study.tell(trial, state=TrialState.PRUNED)
        if summary.get("status") == "stopped":
            raise KeyboardInterrupt  # Ctrl-C: the run saved a checkpoint and stopped early
        value = objective_value(summary, cfg, sweep.metric, pruning.last_value)
    except TunesmithError as exc:  # the config or data is wrong: every other trial would fail the same way
        _fail(study, trial, str(exc))
        raise
    except KeyboardInterrupt:
        _fail(study, trial, "interrupted")
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    except Exception as exc:  # a diverged or crashed trial is a result of the search, not its end
        print(f"trial {trial.number}: {_describe(trial.params)} -> failed ({type(exc).__name__}: {exc})")
        return _fail(study, trial, f"{type(exc).__name__}: {exc}")
    finally:
        _release_memory()
    print(f"trial {trial.number}: {_describe(trial.params)} -> {sweep.metric} {value:.6g}")
    frozen = study.tell(trial, value)
    _drop_checkpoints(summary["run_dir"], sweep)
    return frozen


def _drop_checkpoints(run_dir: str, sweep: Sweep) -> None:
    """A finished trial's checkpoints are only for resuming it: without sweep.keep_checkpoints they go, so a long
    sweep of full fine-tunes does not fill the disk (the trial's model/, metrics and report stay)."""
    if not sweep.settings.keep_checkpoints:
        shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)


def trial_config(sweep: Sweep, values: dict[str, Any], output_dir: str, name: str) -> Config:
    """The run config of one point: the raw YAML with the values set, its own output folder, no sweep section."""
    raw = with_values(sweep.raw, values)
    raw.setdefault("output", {}).update({"dir": output_dir, "name": name})
    return config_from_dict(raw, base=sweep.base)


def objective_value(summary: dict, cfg: Config, metric: str, last_evaluated: float | None) -> float:
    """The final validation metric of the run (of the weights it ended with)."""
    name = metric.removeprefix("eval_")
    value = get_task(cfg.task).final_metric(RunSummary.from_dict(summary), name)
    if value is None:  # a metric the task does not report at the end: the best or the last evaluated value
        best = name == cfg.train.metric.removeprefix("eval_")
        value = summary.get("best_metric") if best else last_evaluated
    if value is None:
        raise RuntimeError(f"the run reported no {metric}")
    if not math.isfinite(value):
        raise FloatingPointError(f"{metric} is {value}: the run diverged")
    return float(value)


def _fail(study: optuna.Study, trial: Trial, error: str) -> FrozenTrial:
    trial.set_user_attr("error", error[:2000])
    return study.tell(trial, state=TrialState.FAIL)


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
    )


def _release_memory() -> None:
    """Trials run one after another in this process: give the last one's model back before the next."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- outputs --------------------------------------------------------------------------------------------


def trial_records(study: optuna.Study) -> list[dict]:
    trials = study.get_trials(deepcopy=False)
    retried_as = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    records = []
    for trial in trials:
        value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
        record = {
            "number": trial.number,
            "state": trial.state.name,
            "value": value,
            "params": trial.params,
            "duration_seconds": round(trial.duration.total_seconds(), 1) if trial.duration else None,
            "run_dir": trial.user_attrs.get("run_dir"),
        }
        for key in ("pruned_at_step", "retry_of", "error"):
            if key in trial.user_attrs:
                record[key] = trial.user_attrs[key]
        if trial.number in retried_as:  # killed or interrupted: its point ran again as that trial
            record["retried_as"] = retried_as[trial.number]
        records.append(record)
    return records


def param_importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """fANOVA importances of the completed trials, or empty with a sentence saying why not."""
    complete = count(study, (TrialState.COMPLETE,))
    if complete < 2:
        return {}, f"Parameter importances need at least 2 completed trials; this study has {complete}."
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:
        return {}, f"Parameter importances could not be computed: {exc}"
    if not importances:
        return {}, "Parameter importances need a parameter that varies across the completed trials."
    return {name: float(value) for name, value in importances.items()}, None


def write_outputs(study: optuna.Study, sweep: Sweep) -> dict:
    """best_config.yaml, trials.json and sweep_report.html; every worker writes them when it ends."""
    records = trial_records(study)
    trials_file = sweep.folder / "trials.json"
    _write_atomically(trials_file, json.dumps(records, indent=2, default=str))
    best = best_record(records, sweep.direction)
    best_config = None
    if best:
        values = {key: config_value(sweep.space.get(key), value) for key, value in best["params"].items()}
        cfg = trial_config(sweep, values, sweep.output_dir, f"{sweep.study_name}-best")
        best_config = sweep.folder / "best_config.yaml"
        temporary = best_config.with_name(f".{best_config.name}.{os.getpid()}.tmp")
        dump_config(cfg, temporary)
        reduced = reduced_size(best)
        if reduced:
            print(f"best trial {best['number']}: {reduced}")
            temporary.write_text(f"# {reduced}\n" + temporary.read_text(), encoding="utf-8")
        temporary.replace(best_config)
    importances, note = param_importances(study)
    report = write_sweep_report(
        sweep.folder / "sweep_report.html",
        sweep.study_name,
        sweep.metric,
        sweep.direction,
        records,
        importances,
        note,
    )
    states: dict[str, int] = {}
    for record in records:
        states[record["state"]] = states.get(record["state"], 0) + 1
    return {
        "study": sweep.study_name,
        "storage": sweep.storage_url,
        "folder": str(sweep.folder),
        "metric": sweep.metric,
        "direction": sweep.direction,
        "best": {key: best[key] for key in ("number", "value", "params")} if best else None,
        "best_config": str(best_config) if best_config else None,
        "trials_file": str(trials_file),
        "report": str(report),
        "states": states,
        "importances": importances,
    }


def reduced_size(best: dict) -> str | None:
    """A sentence when the best trial was cut short by the sweep's --time (searched at reduced size), else None."""
    run_dir = best.get("run_dir")
    summary = RunFolder(Path(run_dir)).read_summary() if run_dir and Path(run_dir).exists() else None
    budget = (summary.time_budget if summary else None) or {}
    planned, done = budget.get("planned_steps"), budget.get("steps_done")
    if not planned or not done or done >= planned:
        return None
    return (
        f"searched at reduced size: --time cut the trial at step {done} of {planned}; best_config.yaml trains "
        f"all {planned} steps (set train.time_budget in it to bound that run)"
    )


def _write_atomically(path: Path, text: str) -> None:
    # Workers finishing together each write their own temporary file: a reader never sees a mix of two.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
