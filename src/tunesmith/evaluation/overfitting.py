"""Overfitting signal: validation loss rising for several evaluations in a row while training loss falls."""

from __future__ import annotations


def _train_loss_at(records: list[dict], step: int) -> float | None:
    """The last logged training loss at or before `step`."""
    losses = [r["loss"] for r in records if "loss" in r and r.get("step", 0) <= step]
    return losses[-1] if losses else None


def overfitting_signal(records: list[dict], patience: int) -> dict | None:
    """The first point where validation loss has risen `patience` evaluations in a row while training loss fell."""
    evaluations = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if len(evaluations) <= patience:
        return None
    rising = 0
    for index in range(1, len(evaluations)):
        step, loss = evaluations[index]
        rising = rising + 1 if loss > evaluations[index - 1][1] else 0
        if rising < patience:
            continue
        start_step = evaluations[index - patience][0]
        train_start, train_now = _train_loss_at(records, start_step), _train_loss_at(records, step)
        if train_start is None or train_now is None or train_now >= train_start:
            continue
        best_step, best_loss = min(evaluations[: index + 1], key=lambda pair: pair[1])
        return {
            "detected_at_step": step,
            "rising_since_step": start_step,
            "evaluations_rising": rising,
            "best_step": best_step,
            "best_eval_loss": best_loss,
            "train_loss": [train_start, train_now],
        }
    return None


def describe(signal: dict, early_stopping: bool) -> str:
    return (
        f"overfitting: validation loss rose for {signal['evaluations_rising']} evaluations "
        f"(steps {signal['rising_since_step']}-{signal['detected_at_step']}) while training loss fell "
        f"({signal['train_loss'][0]:.4f} -> {signal['train_loss'][1]:.4f}); best step {signal['best_step']} "
        f"(validation loss {signal['best_eval_loss']:.4f})"
        + (
            ""
            if early_stopping
            else "; set train.early_stopping_patience to stop there (train.load_best keeps its weights)"
        )
    )
