"""Trainer callbacks: metrics.jsonl, a progress bar with tokens/s, and clean stops on SIGINT/SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback


class TokenCounter:
    """Training throughput: the collator's count of real (non-padding) tokens and the time since training began,
    less what evaluation and checkpoint writes took (the Trainer wraps those in `excluded()`)."""

    def __init__(self, collator):
        self.collator = collator
        self.restart()

    def restart(self) -> None:
        self.started_at, self.tokens_at_start = time.perf_counter(), self.collator.real_tokens
        self.excluded_seconds, self.excluded_tokens = 0.0, 0

    @contextmanager
    def excluded(self):
        """Work done inside (an evaluation, a checkpoint write) counts neither its tokens nor its time."""
        started, tokens = time.perf_counter(), self.collator.real_tokens
        try:
            yield
        finally:
            self.excluded_seconds += time.perf_counter() - started
            self.excluded_tokens += self.collator.real_tokens - tokens

    @property
    def seconds(self) -> float:
        """Seconds spent training since the start (or the resume)."""
        return time.perf_counter() - self.started_at - self.excluded_seconds

    @property
    def unit(self) -> str:
        """What the collator counts: real tokens ('tok') or, for images and audio, examples ('ex')."""
        return getattr(self.collator, "unit", "tok")

    @property
    def tokens(self) -> int:
        """Real tokens (or examples) trained on since the start (or the resume)."""
        return self.collator.real_tokens - self.tokens_at_start - self.excluded_tokens

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


class MetricsLogger(TrainerCallback):
    """Append every log (train and eval) to metrics.jsonl; a resumed run appends to the same curve. Each record
    carries the steps planned (max_steps), so a reader (the web UI) can say how far the run is and the time left."""

    def __init__(self, path: Path, counter: TokenCounter):
        self.path = path
        self.counter = counter

    def on_train_begin(self, args, state, control, **kwargs):
        self.counter.restart()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            **logs,
        }
        if "loss" in logs:
            key = "tokens_per_second" if self.counter.unit == "tok" else "examples_per_second"
            record[key] = round(self.counter.tokens_per_second, 1)
        record["time"] = round(time.time(), 3)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class ProgressBar(TrainerCallback):
    """One live bar: step, loss, learning rate, real tokens/s and ETA."""

    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix_str(self._postfix(state), refresh=False)

    def _postfix(self, state) -> str:
        last = next((log for log in reversed(state.log_history) if "loss" in log), {})
        parts = [f"{self.counter.unit}/s={self.counter.tokens_per_second:.0f}"]
        if "loss" in last:
            parts.insert(0, f"loss={last['loss']:.4f}")
        if "learning_rate" in last:
            parts.append(f"lr={last['learning_rate']:.2e}")
        return " ".join(parts)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.bar is not None and metrics and "eval_loss" in metrics:
            self.bar.write(f"step {state.global_step}: validation loss {metrics['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class GracefulStop(TrainerCallback):
    """SIGINT/SIGTERM: save a checkpoint at the next step boundary, then stop; a second signal exits at once."""

    def __init__(self):
        self.requested = False
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping (again to abort)."
        )

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


class KillWorker(TrainerCallback):
    """Fault injection for the elastic tests (TUNESMITH_FAULT=kill_worker:STEP): the last rank dies with SIGKILL
    after that step, on the group's first attempt only, so the group torchrun restarts runs through."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        last_rank = os.environ.get("RANK") == str(int(os.environ.get("WORLD_SIZE", "1")) - 1)
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if state.global_step == self.step and last_rank and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)
        return control


def injected_faults() -> list[TrainerCallback]:
    fault = os.environ.get("TUNESMITH_FAULT", "")
    return [KillWorker(int(fault.split(":")[1]))] if fault.startswith("kill_worker:") else []


class OverfitWatch(TrainerCallback):
    """Say once, live, when validation loss has risen for eval.overfit_patience evaluations while train loss fell."""

    def __init__(self, patience: int, early_stopping: bool):
        self.patience = patience
        self.early_stopping = early_stopping
        self.signal: dict | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.signal is not None or not logs or "eval_loss" not in logs:
            return
        from tunesmith.evaluation.overfitting import describe, overfitting_signal

        # The Trainer's log_history holds every train and eval log with its step (restored on resume).
        self.signal = overfitting_signal(state.log_history, self.patience)
        if self.signal is not None and state.is_world_process_zero:
            print(describe(self.signal, self.early_stopping))
