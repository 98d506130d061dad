"""The one training recipe, read top to bottom; a task fills in what differs through a few hooks.

Every cross-task guarantee is written here once: three splits (the test split scored once, at the end, by the
final weights), the measured precision decision, gradient checkpointing from the memory estimate, `compile`
applied or refused with a reason, resume from the last valid checkpoint, the forgetting check, eval.benchmarks
(lm-eval) before and after, samples before and after training, the collapse alarm, and the run summary. A task
supplies its data, model, trainer and scores (the hooks of tasks.base.Task, in the order this recipe calls them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import set_seed

from tunesmith.config import Config
from tunesmith.console import is_main, say, world_size
from tunesmith.evaluation import benchmarks
from tunesmith.evaluation.collapse import describe as describe_collapse
from tunesmith.methods import count_parameters, get_method
from tunesmith.models.loading import default_cache_dir, load_tokenizer, resolve_model
from tunesmith.models.quantized import int8_tradeoff
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import defaults
from tunesmith.tasks.common import (
    decide_checkpointing,
    evaluation_logged_at,
    evaluation_of_final_weights,
    finish_run,
    resume_after_restart,
    resume_point,
    training_result,
)
from tunesmith.training.compile import compile_blocks, decide_compile, planned_tokens
from tunesmith.training.distributed import node_count, restart_count
from tunesmith.training.flops import training_flops
from tunesmith.training.hardware import check_weights_dtype, describe_hardware, library_versions
from tunesmith.training.loop import fit, stop_message
from tunesmith.training.precision import decide_precision, measured_gflops


@dataclass
class Prepared:
    """A task's data, ready for its trainer: the three splits, the data report, and tokens per training row."""

    train: Any
    validation: Any
    test: Any
    report: dict
    lengths: list[int] | None = None  # None: no activation or FLOP estimate for these inputs
    extras: dict = field(default_factory=dict)  # what the task's own hooks pass each other (tokenizer, ...)
    rows_per_example: int = 1  # rows one example puts in a step (a preference pair: its two answers)
    run: RunFolder | None = None  # set by the pipeline: the run folder the hooks write into


@dataclass
class Solver:
    """A fit without gradient steps (a classifier's features or solved head): the defaults it stands for, and the
    fit, which saves the model and returns run.json's result fields."""

    choices: list
    fit: Callable[[], dict]


# What run.json records for a run that takes no gradient steps: no precision, checkpointing or compile decision.
NO_GRADIENT_STEPS = {
    "precision": None,
    "precision_probe": None,
    "gradient_checkpointing": None,
    "compile": None,
}


def train(task, cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
    started = time.time()
    checked = task.validated_data(cfg)
    benchmarks.check_trainable(cfg.eval.benchmarks, task)  # a bad multiple-choice row fails now
    cache_dir = default_cache_dir(cfg.output.cache_dir)
    model_path = resolve_model(cfg.model, cache_dir)  # a missing model fails before a run folder exists
    run = RunFolder.for_training(cfg, default_name, resume)
    say(f"run folder: {run.path}")
    resume = resume_after_restart(run, resume)
    run.save_config(cfg)
    data = task.prepare(cfg, checked, model_path, cache_dir)
    data.run = run
    run.write_json(run.data_report, data.report)
    task.print_data_summary(data.report)

    # Settings left unset are chosen for the method and the data size; `cfg` stays as the user wrote it.
    run_cfg, choices = (cfg, [])
    if task.chooses_defaults:
        kind, metric = task.plan_kind, task.selection_metric
        run_cfg, choices = defaults.choose(cfg, len(data.train), len(data.validation) > 0, kind, metric)
    method = get_method(cfg.method.name)
    set_seed(cfg.train.seed)  # a new head and adapters start random: seeded, two identical configs agree
    model = task.build_model(cfg, model_path, method, data)
    parameters = count_parameters(model)
    say(
        f"method {method.name}: {parameters['trainable']:,} trainable of {parameters['total']:,} parameters "
        f"({parameters['trainable_percent']}%)"
    )
    tradeoff = int8_tradeoff(model)
    if tradeoff:
        say(tradeoff)
    solver = task.solver(cfg, model_path, model, method, data)  # as the user wrote it: a set rate means steps
    choices = choices if solver is None else solver.choices
    defaults.announce(choices)
    decided = NO_GRADIENT_STEPS if solver else run_time_decisions(run_cfg, model, method, data, cache_dir)
    resume_from = resume_point(run) if resume and solver is None else None
    trainer, counter = (None, None) if solver else task.build_trainer(
        run_cfg, run, model, data, decided["precision"], callbacks, resume, decided["gradient_checkpointing"]["enabled"]
    )  # fmt: skip
    summary = run.update_summary(
        status="running",
        task=cfg.task,
        base_model=cfg.model.name,
        base_model_path=model_path,
        method=method.name,
        is_adapter=method.is_adapter,
        parameters=parameters,
        **decided,
        processes=world_size(),
        nodes=node_count(),
        restarts=restart_count(),
        defaults=defaults.record(choices),
        hardware=describe_hardware(),
        versions=library_versions(),
        **task.summary_fields(cfg, data),
    )
    probe = task.forgetting_probe(cfg, model_path, data)
    if probe is not None and "reference_before" not in summary:  # a resumed run keeps its first score
        summary = run.update_summary(reference_before=probe.score(model))
        say(f"forgetting check: {probe.describe(summary.reference_before)} before training")
    bench = benchmark_check(cfg, run, model_path) if cfg.eval.benchmarks and is_main() else None
    if bench is not None and "benchmarks_before" not in summary:  # before any step: the base's scores
        summary = run.update_summary(benchmarks_before=bench.score(model))
    if data.test and task.scores_test_before and cfg.eval.before_training and summary.test_before is None:
        summary = run.update_summary(test_before=task.score(model, data, "test"))
    task.before_training(run, model, data, summary)
    # Samples come from the test split when there is one: nothing was chosen on it.
    samples = task.samples(cfg, data) if is_main() else []
    if samples and not resume:
        run.write_json(run.path / "samples_base.json", {"outputs": task.generate(model, data, samples)})

    # Evaluations and rank-0-only generation above may have drawn random numbers on some ranks only: re-seed so
    # every rank (and a single process) shuffles the data identically.
    set_seed(cfg.train.seed)
    if solver is not None:
        result = solver.fit()
    else:
        result = fit_with_trainer(task, trainer, counter, resume_from, run, model, method, data, decided)
        if result["status"] == "stopped":
            run.update_summary(**result)
            return finish_run(run, cfg, run.read_summary(), task)
    summary = run.update_summary(**result)  # finished: the saved model is what the test split is scored on
    if data.test:  # scored once, by the final weights: nothing was chosen on it
        result["test"] = task.score(model, data, "test")
        scores = task.describe_scores(result["test"], summary.test_before)
        say(f"test: {scores} (held out: no checkpoint or setting was chosen on it)")
    task.after_training(run, model, data, result)
    tuned = task.generate(model, data, samples) if samples else []
    if samples:
        task.write_samples(run, data, samples, tuned)
    alarm = task.collapse_alarm(data, result.get("validation"), tuned)
    if alarm is not None:
        say(describe_collapse(alarm))
        result["collapse"] = alarm
    if probe is not None:
        result["forgetting"] = probe.drift(summary.reference_before, probe.score(model), cfg)
        say(probe.describe_drift(result["forgetting"]))
    if bench is not None:
        result["benchmarks"] = bench.compare(summary.benchmarks_before, bench.score(model))
        say("benchmarks (lm-eval), base vs tuned:\n" + benchmarks.table(result["benchmarks"]))
        kept = benchmarks.knowledge_kept(result["benchmarks"])
        if kept:
            say(f"forgetting check: {kept}")
    result["wall_seconds"] = round(time.time() - started, 1)
    run.update_summary(**result)
    return finish_run(run, cfg, run.read_summary(), task)


def benchmark_check(cfg: Config, run: RunFolder, model_path: str) -> benchmarks.BenchmarkCheck:
    """eval.benchmarks as lm-eval tasks in RUN/benchmarks/, scored with the base model's tokenizer."""
    tokenizer = load_tokenizer(model_path, cfg.model)
    return benchmarks.BenchmarkCheck(
        cfg.eval.benchmarks, run.path / "benchmarks", tokenizer, cfg.eval.batch_size
    )


def fit_with_trainer(
    task, trainer, counter, resume_from, run: RunFolder, model, method, data, decided
) -> dict:
    """Gradient steps through the task's Trainer; then the final weights saved and scored on validation."""
    with task.training_context(run, model, decided["precision"], method):
        output, stopped = fit(trainer, resume_from)
    train_seconds = counter.seconds  # training steps only: evaluations and checkpoint writes are left out
    before = evaluation_logged_at(trainer, 0)  # train.eval_on_start: evaluated inside the loop, before step 1
    if before is not None and resume_from is None:
        run.update_summary(validation_loss_before=before["eval_loss"])
    if stopped:
        say(stop_message(trainer))
        return {"status": "stopped", "global_step": trainer.state.global_step}
    task.save(run, trainer, data)
    result = training_result(trainer, output, counter, train_seconds)
    if data.validation:
        final = evaluation_of_final_weights(trainer) or trainer.evaluate()
        result["validation_loss_after"] = final["eval_loss"]
        first = run.read_summary().validation_loss_before
        say(
            f"validation loss after training: {final['eval_loss']:.4f}"
            + (f" (before: {first:.4f})" if first else "")
        )
        scores = task.validation_scores(trainer, model, data, final)
        if scores:
            result["validation"] = scores
            say(f"validation after training: {task.describe_scores(scores, None)}")
    return result


def run_time_decisions(run_cfg: Config, model, method, data: Prepared, cache_dir) -> dict:
    """Precision (measured), gradient checkpointing (estimated) and torch.compile (applied or refused), each
    recorded with its reason; the config keeps what the user wrote."""
    precision_probe = decide_precision(run_cfg.train.precision, model.config, cache_dir, model.dtype)
    precision = precision_probe["precision"]
    check_weights_dtype(model.dtype, precision)  # model.dtype: float16 on a CPU, fp32 over bf16 weights
    say(f"precision: {precision_probe['reason']}")
    longest = max(data.lengths) if data.lengths else None
    batch = run_cfg.train.model_copy(update={"batch_size": data.rows_per_example * run_cfg.train.batch_size})
    checkpointing = decide_checkpointing(
        run_cfg.model_copy(update={"train": batch}), model, longest, precision
    )
    train = run_cfg.train
    flops = flops_per_token(model, method, data.lengths)
    if flops is not None:
        tokens = planned_tokens(
            train.max_steps, train.epochs, train.batch_size * train.grad_accum, data.lengths
        )
        compiling = decide_compile(train.compile, tokens, flops, measured_gflops(precision_probe))
    elif train.compile is True:
        compiling = {"enabled": True, "reason": "train.compile: true in the config"}
    else:
        compiling = {"enabled": False, "reason": f"{train.compile}: off, no FLOP estimate for these inputs"}
    if compiling["enabled"]:
        say(f"torch.compile: {compile_blocks(model)} blocks ({compiling['reason']})")
    return {
        "precision": precision,
        "precision_probe": precision_probe,
        "gradient_checkpointing": checkpointing,
        "compile": compiling,
    }


def flops_per_token(model, method, lengths: list[int] | None) -> float | None:
    """The estimate train.compile: auto weighs, or None where the inputs are not token sequences or the
    architecture's sizes are unknown to tunesmith.training.flops."""
    if not lengths:
        return None
    try:
        return training_flops(model.config, 1, sum(lengths) / len(lengths), 1, frozen_base=method.is_adapter)
    except (AttributeError, TypeError):
        return None
