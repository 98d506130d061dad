"""Autopilot: train.time_budget ends a run inside its budget with its schedule re-sized; `tunesmith plan` chooses
from measured probes and the budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.optimization import get_scheduler

from tunesmith import api
from tunesmith.config import config_from_dict, parse_duration
from tunesmith.errors import TunesmithError
from tunesmith.training.budget import TimeBudget, stretch_schedule


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("1h30m", 5400), (45, 45)]
)
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["20 minutes", "m20", "", "0s", "-5"])
def test_a_duration_that_is_not_one_is_refused_naming_the_key(make_config, text):
    with pytest.raises(TunesmithError, match="train.time_budget"):
        config_from_dict(make_config(train={"time_budget": text}))


def test_a_stretched_schedule_decays_to_zero_at_the_new_end():
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=10, num_training_steps=100)
    assert stretch_schedule(scheduler, 40, warmup_fraction=0.1)
    rule = scheduler.lr_lambdas[0]
    assert rule(4) == pytest.approx(1.0)  # warmup re-sized: 10% of 40 steps
    assert rule(40) == pytest.approx(0.0, abs=1e-9)
    assert rule(22) == pytest.approx(0.5, abs=1e-6)  # the cosine's midpoint moved from step 55 to 22
    constant = get_scheduler("constant", optimizer)
    assert not stretch_schedule(constant, 40, None)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_budget_moves_the_last_step_from_the_measured_pace():
    clock = FakeClock()
    said = []
    budget = TimeBudget(100, started=clock.now, warmup=0.0, say=said.append, clock=clock)
    args = TrainingArguments(
        output_dir="/tmp/unused", eval_strategy="no", save_strategy="no", report_to="none"
    )
    state, control = TrainerState(max_steps=1000), TrainerControl()
    clock.now += 10  # data and model loading
    budget.on_train_begin(args, state, control)
    for step in range(1, 4):  # 2 s a step: 100 - 10 (setup) - 5 (finishing: 5% of the budget) leaves 85 s
        clock.now += 2
        state.global_step = step
        budget.on_step_end(args, state, control)
    assert state.max_steps == 3 + (100 - 16 - 5) // 2
    assert "ends at step 42 of 1000" in said[0]
    assert not control.should_training_stop
    clock.now += 200  # the machine slowed down: the budget is spent
    state.global_step = 4
    budget.on_step_end(args, state, control)
    assert state.max_steps == 4 and control.should_training_stop


def test_a_budget_never_lengthens_a_run():
    clock = FakeClock()
    budget = TimeBudget(3600, started=clock.now, warmup=0.0, say=lambda _: None, clock=clock)
    args = TrainingArguments(
        output_dir="/tmp/unused", eval_strategy="no", save_strategy="no", report_to="none"
    )
    state, control = TrainerState(max_steps=10), TrainerControl()
    budget.on_train_begin(args, state, control)
    for step in range(1, 6):
        clock.now += 1
        state.global_step = step
        budget.on_step_end(args, state, control)
    assert state.max_steps == 10 and "ends_at_step" not in budget.record


class SlowSteps(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.25)


def test_a_run_with_a_time_budget_ends_inside_it_with_its_schedule_decayed(make_config):
    # 400 steps at >= 0.25 s each would take 100 s; the budget is 12 s for the whole run.
    raw = make_config(
        rows=40,
        train={"max_steps": 400, "eval_steps": 20, "time_budget": "12s", "scheduler": "linear"},
        eval={"samples": 0},
    )
    started = time.time()
    summary = api.train(config_from_dict(raw), callbacks=[SlowSteps()])
    elapsed = time.time() - started
    record = summary["time_budget"]
    assert record["budget_seconds"] == 12
    assert record["planned_steps"] == 400
    assert summary["global_step"] == record["ends_at_step"] == record["steps_done"] < 400
    assert elapsed < 12 * 1.1
    metrics = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").open()]
    learning_rates = [m["learning_rate"] for m in metrics if "learning_rate" in m]
    assert learning_rates[-1] < 0.2 * learning_rates[0]  # decayed to the new end, not cut mid-schedule
    assert any(
        "eval_loss" in m and m["step"] == summary["global_step"] for m in metrics
    )  # evaluated at the end
