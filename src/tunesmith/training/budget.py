"""train.time_budget: the run ends inside a wall-clock budget, its schedule re-sized from the measured speed.

The run's clock starts when its folder is made (before the data and the model load). After every step the
callback predicts when the run would end: the steps left at the measured pace (evaluations and checkpoint writes
included, amortized over the steps since training began) plus what the run does after its last step (the final
evaluations, samples, report), estimated from the evaluations measured so far. When that lands past the budget the
last step is moved earlier and the learning-rate schedule (warmup and decay) is re-sized to the new length, so the
run still decays to the end and keeps its best checkpoint. The budget never lengthens a run.
"""

from __future__ import annotations

import math
import time
from functools import partial

from transformers import TrainerCallback

MEASURED_STEPS = 3  # steps timed before the first re-estimate; the pace is the median of the recent ones


def stretch_schedule(scheduler, total_steps: int, warmup_fraction: float | None) -> bool:
    """Re-size a transformers LambdaLR schedule to end at `total_steps` (warmup re-sized too when it was given as
    a fraction); False when the schedule has no length to change (constant) or is not one transformers made."""
    changed = False
    for index, rule in enumerate(getattr(scheduler, "lr_lambdas", [])):
        keywords = getattr(rule, "keywords", None) or {}
        if "num_training_steps" not in keywords:
            continue
        update = {"num_training_steps": total_steps}
        if warmup_fraction is not None and "num_warmup_steps" in keywords:
            update["num_warmup_steps"] = math.ceil(warmup_fraction * total_steps)
        scheduler.lr_lambdas[index] = partial(rule.func, *rule.args, **{**keywords, **update})
        changed = True
    return changed


class TimeBudget(TrainerCallback):
    """Ends training early enough that the whole run (from `started`) finishes within `budget` seconds."""

    def __init__(self, budget: float, started: float, warmup: float, say=print, write=None, clock=time.time):
        self.budget, self.started, self.clock, self.say, self.write = budget, started, clock, say, write
        self.warmup_fraction = warmup if warmup < 1 else None
        self.step_seconds: list[float] = []  # each step's own work
        self.between_seconds = 0.0  # logging and checkpoint writes between steps (evaluations apart)
        self.evaluation_seconds = 0.0  # the longest evaluation so far
        self.evaluated_between = 0.0
        self.step_began = self.step_ended = None
        self.planned_steps = None
        self.record: dict = {"budget_seconds": budget}

    # -- measurements --------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.planned_steps = state.max_steps
        self.record.update(planned_steps=state.max_steps, setup_seconds=round(self.clock() - self.started, 1))

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_began = self.clock()
        if self.step_ended is not None:
            self.between_seconds += max(0.0, self.step_began - self.step_ended - self.evaluated_between)
        self.evaluated_between = 0.0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        runtime = float((metrics or {}).get("eval_runtime") or 0.0)
        self.evaluation_seconds = max(self.evaluation_seconds, runtime)
        self.evaluated_between += runtime

    def finishing_seconds(self) -> float:
        """What the run does after its last step: the final evaluations (validation, test) and writing out."""
        return 2 * self.evaluation_seconds + max(0.05 * self.budget, 10.0)

    def seconds_per_step(self, args, state) -> float | None:
        """A step's work, the writes between steps, and its share of the evaluations, as measured so far."""
        if len(self.step_seconds) < MEASURED_STEPS:
            return None
        steps = len(self.step_seconds)
        recent = sorted(
            self.step_seconds[1:][-20:]
        )  # the first step carries one-off costs (allocation, warmup)
        pace = recent[len(recent) // 2] + self.between_seconds / steps
        if args.eval_strategy != "no" and state.eval_steps:
            every = state.eval_steps if state.eval_steps >= 1 else max(1, state.eval_steps * state.max_steps)
            pace += self.evaluation_seconds / every
        return pace

    # -- the decision ----------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        now = self.step_ended = self.clock()
        if self.step_began is not None:
            self.step_seconds.append(now - self.step_began)
        pace = self.seconds_per_step(args, state)
        if pace is None:
            return control
        left = self.started + self.budget - now - self.finishing_seconds()
        fits = state.global_step + max(0, math.floor(left / pace))
        if fits >= state.max_steps:
            return control
        new_total = max(state.global_step, fits)
        first = "ends_at_step" not in self.record
        state.max_steps = new_total
        if new_total == state.global_step:  # the budget is spent: end now, as the Trainer ends at max_steps
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        stretched = lr_scheduler is not None and stretch_schedule(
            lr_scheduler, new_total, self.warmup_fraction
        )
        self.record.update(
            ends_at_step=new_total,
            seconds_per_step=round(pace, 3),
            schedule_resized=stretched,
            finishing_seconds=round(self.finishing_seconds(), 1),
        )
        if first or new_total == state.global_step:
            self.say(
                f"time budget {self.budget:.0f} s: at {pace:.2f} s a step the run ends at step {new_total} of "
                f"{self.planned_steps}" + (" (learning-rate schedule re-sized)" if stretched else "")
            )
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.record["steps_done"] = state.global_step
        self.record["training_ended_at_seconds"] = round(self.clock() - self.started, 1)
        if self.write is not None and state.is_world_process_zero:
            self.write(self.record)
