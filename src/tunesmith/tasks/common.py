"""What every task's recipe shares: the bad-rows error, resuming, peak memory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tunesmith.config import DataConfig
from tunesmith.console import say
from tunesmith.data.collate import pad_token_id
from tunesmith.data.labelled import LabelSettings
from tunesmith.data.prepare import bad_rows_error  # noqa: F401  (re-exported for the recipes)
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.forgetting import Reference, drift, replay_remedy
from tunesmith.evaluation.forgetting import describe as describe_drift
from tunesmith.run_folder import RunFolder, RunSummary, free_path
from tunesmith.training.checkpoints import checkpoint_step, latest_valid
from tunesmith.training.distributed import restart_count


def resume_after_restart(run: RunFolder, resume: bool) -> bool:
    """Whether to resume: as asked, or, after torchrun restarted the group because a worker died
    (--max-restarts), from the newest valid checkpoint; with none written yet the run starts over."""
    attempt = restart_count()
    if resume or attempt == 0:
        return resume
    if latest_valid(run.checkpoints)[0] is None:
        dropped = run.truncate_metrics_after(0)
        say(
            f"restart {attempt} after a worker died: no checkpoint yet, training starts over ({dropped} metric lines dropped)"
        )
        return False
    say(f"restart {attempt} after a worker died: continuing from the last checkpoint")
    return True


def resume_point(run: RunFolder) -> str:
    """The newest checkpoint that passes its manifest; the metrics log is cut back to its step."""
    checkpoint, skipped = latest_valid(run.checkpoints)
    for line in skipped:
        say(f"resume: {line}")
    if checkpoint is None:
        raise TunesmithError(
            f"--resume: {run.path} has no complete checkpoint; start the run again without --resume"
        )
    step = checkpoint_step(checkpoint)
    dropped = run.truncate_metrics_after(step)
    say(
        f"resuming from {checkpoint.name}: weights, optimizer, LR schedule, RNG states and data position at step {step}"
        + (
            f" ({dropped} metric lines logged after it were dropped, they will be logged again)"
            if dropped
            else ""
        )
    )
    return str(checkpoint)


def training_result(trainer, output, counter, seconds: float) -> dict:
    """run.json's fields of a finished training loop: steps, loss, time and throughput (`seconds`: the counter's
    training time read as the loop ended; it leaves evaluations and checkpoint writes out), the best checkpoint
    and the peak memory."""
    rate = counter.tokens / max(seconds, 1e-9)
    throughput = (
        {"train_tokens": counter.tokens, "tokens_per_second": round(rate, 1)}
        if counter.unit == "tok"
        else {"examples_per_second": round(rate, 2)}
    )
    return {
        "status": "finished",
        "global_step": trainer.state.global_step,
        "train_loss": output.training_loss,
        "train_seconds": round(seconds, 3),
        **throughput,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "peak_memory_mb": peak_memory_mb(),
    }


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def data_for_eval(data: DataConfig, source: str | Path | None) -> DataConfig:
    """The run's data settings, pointed at `source` (every row is evaluated) when given."""
    if source is None:
        return data
    path = Path(source).resolve()
    if not path.exists():
        raise TunesmithError(f"--data {source}: file not found")
    update = {
        "train_file": str(path),
        "validation_file": None,
        "validation_ratio": 0.0,
        "test_file": None,
        "test_ratio": 0.0,  # else the run's test_ratio would hold part of `source` out and leave it unscored
        "max_examples": None,
    }
    return data.model_copy(update=update)


def stop_on_bad_rows(checked, data: DataConfig):
    """`checked` (a CheckedData), unless it has bad rows and data.on_error is stop: then they end the command."""
    if checked.problems and data.on_error == "stop":
        raise bad_rows_error(checked)
    return checked


def finish_run(run: RunFolder, cfg, summary: RunSummary, task) -> dict:
    """Every run's last step: the overfitting verdict from metrics.jsonl, then report.html; returns run.json's
    fields and the run folder (what api.train returns)."""
    from tunesmith.console import is_main
    from tunesmith.evaluation.overfitting import overfitting_signal

    if not is_main():
        return summary.to_dict() | {"run_dir": str(run.path)}
    summary = run.update_summary(
        overfitting=overfitting_signal(run.read_metrics(), cfg.eval.overfit_patience)
    )
    if cfg.plan is not None:
        summary = run.update_summary(plan=plan_versus_actual(cfg.plan, summary, time.time() - run.opened_at))
    try:
        from tunesmith.report.run_report import write_run_report

        say(f"report: {write_run_report(run, task)}")
    except Exception as exc:  # the trained model is saved: a report problem must not lose the run
        say(
            f"report.html could not be written ({type(exc).__name__}: {exc}); rebuild it with `tunesmith report {run.path}`"
        )
    return summary.to_dict() | {"run_dir": str(run.path)}


def plan_versus_actual(plan, summary: RunSummary, seconds: float) -> dict:
    """`tunesmith plan`'s prediction beside what the run measured (`seconds`: from the command's start to
    before the report), with the errors in percent."""

    def error(predicted, actual):
        return round(100 * (actual - predicted) / predicted, 1) if predicted and actual else None

    record = {
        "budget_seconds": plan.budget_seconds,
        "predicted_seconds": plan.predicted_seconds,
        "actual_seconds": round(seconds, 1),
        "time_error_percent": error(plan.predicted_seconds, seconds),
        "predicted_peak_memory_mb": plan.predicted_peak_memory_mb,
        "actual_peak_memory_mb": summary.peak_memory_mb,
        "memory_error_percent": error(plan.predicted_peak_memory_mb, summary.peak_memory_mb),
        "host": plan.host,
    }
    if plan.budget_seconds:
        record["within_budget"] = seconds <= plan.budget_seconds
    return {k: v for k, v in record.items() if v is not None}


def decide_checkpointing(cfg, model, longest: int | None, precision: str) -> dict:
    """Resolve train.gradient_checkpointing ('auto' from the memory estimate) into a recorded decision;
    the config keeps what the user wrote, the Trainer gets decision["enabled"]."""
    from tunesmith.training.distributed import per_device_batch
    from tunesmith.training.memory import choose_checkpointing

    setting = cfg.train.gradient_checkpointing
    if setting == "auto" and longest is None:
        decision = {"enabled": False, "reason": "auto: estimated for text models only; off"}
    else:
        batch = per_device_batch(cfg.train.batch_size)
        decision = choose_checkpointing(setting, model.config, batch, longest or 0, precision, model=model)
    if setting == "auto" and decision["enabled"]:
        say(f"gradient checkpointing on: {decision['reason'].removeprefix('auto: ')}")
    return decision


def evaluation_logged_at(trainer, step: int) -> dict | None:
    """The evaluation the Trainer logged at `step` (step 0: train.eval_on_start), or None."""
    return next(
        (log for log in trainer.state.log_history if "eval_loss" in log and log.get("step") == step), None
    )


def evaluation_of_final_weights(trainer) -> dict | None:
    """The evaluation already logged for the weights the run ends with (the best checkpoint's, or the last step's)."""
    state = trainer.state
    # train.load_best: false ends with the last step's weights even when a best checkpoint was recorded
    best = state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
    best_step = checkpoint_step(Path(best)) if best else None
    return evaluation_logged_at(trainer, best_step if best_step is not None else state.global_step)


class LinearProbeCheck:
    """The forgetting check of an encoder (classification, token classification): a linear probe's accuracy on
    its pooled features of eval.reference (a labelled text set), before and after fine-tuning."""

    def __init__(self, cfg, modality, fields: LabelSettings | None = None):
        """`fields`: the reference table's label (and text pair, file) columns; default: label, text alone."""
        from tunesmith.evaluation.forgetting import ProbeReference

        self.cfg, self.modality = cfg, modality
        self.reference = ProbeReference.load(cfg, modality, fields or LabelSettings())

    def score(self, model) -> dict:
        cfg, text = self.cfg, self.modality.name == "text"
        return self.reference.score(
            model, self.modality.collator(model), cfg.eval.batch_size, text, cfg.train.seed
        )

    def describe(self, score: dict) -> str:
        return f"reference probe accuracy {score['accuracy']:.4f}"

    def drift(self, before: dict, after: dict, cfg) -> dict:
        from tunesmith.evaluation.forgetting import drift

        return drift(before, after, cfg.eval.forgetting_threshold, "accuracy") | {
            "reference": self.reference.path
        }

    def describe_drift(self, change: dict) -> str:
        from tunesmith.evaluation.forgetting import describe

        return describe(change, self.reference.path)


class ReferencePerplexity:
    """The forgetting check of a language model: its perplexity on eval.reference (general text), before and after."""

    def __init__(self, cfg, extras: dict):
        self.cfg = cfg
        self.pad_id = pad_token_id(extras["tokenizer"])
        self.reference = Reference.load(cfg, extras["renderer"].encode_text)

    def score(self, model) -> dict:
        return self.reference.score(model, self.pad_id, self.cfg.eval.batch_size)

    def describe(self, score: dict) -> str:
        r = self.reference
        return (
            f"reference perplexity {score['perplexity']:.4g} ({r.texts_used} of {r.texts_total} texts, "
            f"{score['tokens']} tokens)"
        )

    def drift(self, before: dict, after: dict, cfg) -> dict:
        change = drift(before, after, cfg.eval.forgetting_threshold) | {"reference": self.reference.path}
        if change["warning"]:
            share = cfg.data.replay.share if cfg.data.replay else None
            change["remedy"] = replay_remedy(change["drift_percent"], change["threshold_percent"], share)
        return change

    def describe_drift(self, change: dict) -> str:
        return describe_drift(change, self.reference.path)


def write_conversation_samples(run: RunFolder, samples: list, tuned: list[str]) -> None:
    """samples.jsonl: each held-out prompt with its reference, the base model's answer and the tuned one's."""
    base_file = run.path / "samples_base.json"
    base_outputs = (
        json.loads(base_file.read_text())["outputs"] if base_file.exists() else [None] * len(samples)
    )
    with run.samples.open("w", encoding="utf-8") as handle:
        for (where, messages, reference), base, answer in zip(samples, base_outputs, tuned, strict=True):
            record = {
                "where": where,
                "prompt": messages[-1][1],
                "reference": reference,
                "base": base,
                "tuned": answer,
            }
            handle.write(json.dumps(record) + "\n")


def prediction_target(
    run: RunFolder, source, output, problems: list[str], done: str, suffixes=(".jsonl", ".csv")
):
    """Where `tunesmith predict` writes, after refusing unreadable inputs (each named), an existing file (nothing
    the user made is overwritten) or an output type the task does not write."""
    if problems:
        raise TunesmithError(
            f"{len(problems)} unreadable input(s); nothing was {done}", [f"  {p}" for p in problems[:50]]
        )
    target = Path(output) if output else free_path(run.path / "predictions" / f"{Path(source).stem}.jsonl")
    if target.exists():
        raise TunesmithError(f"{target} already exists; choose another --output")
    if target.suffix.lower() not in suffixes:
        raise TunesmithError(f"--output {target}: use a {' or '.join(suffixes)} file name")
    return target


def encoder_decoder_exportable(cfg, auto_class: str, model, processor, probes: list, validation: list):
    """An encoder-decoder run (seq2seq, speech recognition) as a models.exportable.Exportable: its inputs are the
    probes' keys, in order; its parity metric is the validation loss per target token (labels at the positions of
    the decoder's logits)."""
    from tunesmith.evaluation.lm import label_loss_sums
    from tunesmith.models.exportable import Exportable

    return Exportable(
        task=cfg.task,
        auto_class=auto_class,
        metric_name="validation_loss",
        metric_sums=label_loss_sums,
        model=model,
        processor=processor,
        input_names=list(probes[-1]),
        probes=probes,
        validation=validation,
    )


# the classification tasks' own section (tasks/classification/settings.py)
CLASSIFICATION_SECTION = "classification"


def classifier_settings_problems(cfg) -> list[str]:
    """Settings only classification reads, set on a task that would ignore them: one line each."""
    problems = []
    if cfg.train.class_weights or cfg.train.layer_lr_decay:
        problems.append("train.class_weights and train.layer_lr_decay are for classification tasks")
    if CLASSIFICATION_SECTION in cfg.task_sections:
        problems.append(
            f"{CLASSIFICATION_SECTION}: its settings are for the classification tasks, which {cfg.task} is not; "
            "remove the section"
        )
    return problems
