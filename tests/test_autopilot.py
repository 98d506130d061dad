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
    for step in range(
        1, 4
    ):  # 2 s a step: after 3 steps, 100 - 16 - 10 (finishing: at least 10 s) leaves 74 s
        budget.on_step_begin(args, state, control)
        clock.now += 2
        state.global_step = step
        budget.on_step_end(args, state, control)
    assert state.max_steps == 3 + 74 // 2
    assert "ends at step 40 of 1000" in said[0]
    assert not control.should_training_stop
    budget.on_step_begin(args, state, control)
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
        budget.on_step_begin(args, state, control)
        clock.now += 1
        state.global_step = step
        budget.on_step_end(args, state, control)
    assert state.max_steps == 10 and "ends_at_step" not in budget.record


class SlowSteps(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.25)


def test_a_run_with_a_time_budget_ends_inside_it_with_its_schedule_decayed(make_config):
    # 400 steps at >= 0.25 s each would take 100 s; the budget is 30 s for the whole run.
    raw = make_config(
        rows=40,
        train={"max_steps": 400, "eval_steps": 20, "time_budget": "30s", "scheduler": "linear"},
        eval={"samples": 0},
    )
    started = time.time()
    summary = api.train(config_from_dict(raw), callbacks=[SlowSteps()])
    elapsed = time.time() - started
    record = summary["time_budget"]
    assert record["budget_seconds"] == 30
    assert record["planned_steps"] == 400
    assert summary["global_step"] == record["ends_at_step"] == record["steps_done"] < 400
    assert elapsed < 30 * 1.1
    metrics = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").open()]
    learning_rates = [m["learning_rate"] for m in metrics if "learning_rate" in m]
    assert learning_rates[-1] < 0.2 * learning_rates[0]  # decayed to the new end, not cut mid-schedule
    assert any(
        "eval_loss" in m and m["step"] == summary["global_step"] for m in metrics
    )  # evaluated at the end


# -- tunesmith plan ---------------------------------------------------------------------------------------
from tunesmith.commands.plan import plan  # noqa: E402
from tunesmith.commands.plan_probes import Measurement, ProbeOutOfTime, run_probe  # noqa: E402
from tunesmith.tasks.causal_lm import CAUSAL_LM  # noqa: E402

# A fixed measurement per rung of the causal-LM ladder: (seconds a step, peak MB)
MEASURED = {
    "qlora r=8": (0.5, 900),
    "lora r=8 int8 base": (0.8, 1500),
    "lora r=8 on q,v": (0.1, 2000),
    "lora r=16 all-linear": (0.2, 2500),
    "full": (0.4, 6000),
}


def fixed_probe(calls, clock, cost=0.0):
    """A probe that takes `cost` seconds of the fake clock (stopped at its timeout, as run_probe is)."""

    def probe(raw, rung, max_length, steps, timeout=None):
        calls.append(rung.label)
        if timeout is not None and cost > timeout:
            clock.now += timeout
            raise ProbeOutOfTime(rung.label)
        clock.now += cost
        pace, peak = MEASURED[rung.label]
        return Measurement(
            seconds_per_step=pace,
            evaluation_seconds=1.0,
            overhead_seconds=20.0,
            peak_memory_mb=peak,
            probe_seconds=cost,
        )

    return probe


def plan_for(tmp_path, make_config, budget, memory=None, rows=400, grad_accum=1, cost=0.0):
    raw = make_config(
        rows=rows,
        data={"test_ratio": 0.0},  # the arithmetic below: 20% of the rows for validation, the rest to train
        train={"max_steps": None, "eval_steps": None, "learning_rate": None, "grad_accum": grad_accum},
    )
    del raw["train"]["max_steps"], raw["train"]["eval_steps"], raw["train"]["learning_rate"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(raw))  # JSON is YAML
    calls: list[str] = []
    clock = FakeClock()  # planning's own work costs nothing here; each probe costs `cost`
    from tunesmith.commands import plan as plan_module

    result = plan_module.plan(
        config_file,
        budget,
        memory,
        output=tmp_path / "plan.yaml",
        probe=fixed_probe(calls, clock, cost),
        clock=clock,
    )
    return result, calls


def test_the_plan_grows_with_the_budget_and_shrinks_with_the_memory(tmp_path, make_config):
    # 320 training rows, batch 4: 80 steps an epoch; 20 s overhead and 6 evaluations of 1 s besides the steps
    small, calls = plan_for(tmp_path, make_config, "45s")
    # probes free here, so the run gets all 45 s: x 0.92 - 26 s leaves 15.4 s of steps: one epoch at 0.1 s a step
    # (8 s), not at 0.2 s (16 s)
    assert small["method"] == "lora r=8 on q,v" and small["run_budget_seconds"] == 45
    assert "qlora r=8" not in calls  # qlora is for when memory is short
    large, _ = plan_for(tmp_path, make_config, "10m")
    assert large["method"] == "full"
    assert large["steps"] == 5 * 80  # capped at the generator's most epochs, not stretched to fill 10 minutes
    tight, _ = plan_for(tmp_path, make_config, "10m", memory="3G")
    assert tight["method"] == "lora r=16 all-linear"  # full needs 6000 MB
    short, calls = plan_for(tmp_path, make_config, "10m", memory="1.8G")
    # no float rung fits 1.8 GB: both quantized bases do, and the 8-bit one (nearer the float base) is chosen
    assert short["method"] == "lora r=8 int8 base" and {"qlora r=8", "lora r=8 int8 base"} <= set(calls)
    starved, calls = plan_for(tmp_path, make_config, "10m", memory="1G")
    assert starved["method"] == "qlora r=8"  # the 8-bit base needs 1500 MB
    again, calls = plan_for(tmp_path, make_config, "45s")
    assert calls == []  # cached: the same data, settings and host probe nothing
    assert (again["method"], again["steps"], again["predicted_seconds"]) == (
        small["method"],
        small["steps"],
        small["predicted_seconds"],
    )
    assert all(option["cached"] for option in again["options"])


def test_the_plan_proposes_self_replay_only_when_the_run_leaves_time_to_generate_it(tmp_path, make_config):
    from tunesmith.commands.plan_replay import generation_seconds

    roomy, _ = plan_for(tmp_path, make_config, "10m")
    planned = __import__("yaml").safe_load(Path(roomy["config"]).read_text())
    assert roomy["replay"] == planned["data"]["replay"] == {"share": 0.05}
    assert any(
        r.startswith("data.replay share 0.05: 5% of each epoch is the base model's own")
        for r in roomy["reasons"]
    )
    config_from_dict(planned)  # a valid config
    tight, _ = plan_for(tmp_path, make_config, "45s")  # the run fills its 45 s: nothing left to generate in
    assert tight["replay"] is None
    assert any(r.startswith("no data.replay: generating self-replay's 64 answers") for r in tight["reasons"])
    # the estimate: the probe's step time per token (a step is ~3 forwards), times the tokens, times the slowdown
    from tunesmith.commands.plan_probes import Measurement
    from tunesmith.config import ReplaySettings

    step = Measurement(seconds_per_step=0.6, evaluation_seconds=1, overhead_seconds=1, peak_memory_mb=1)
    assert generation_seconds(step, 4, 50, ReplaySettings()) == pytest.approx(10 + 64 * 192 * 0.6 / 600 * 4.0)


def test_probes_stop_at_their_share_and_the_run_gets_what_planning_left(tmp_path, make_config):
    # 2 minutes: planning may spend 40%, 48 s; each probe takes 20 s, so the third (full) would end past it
    result, calls = plan_for(tmp_path, make_config, "2m", cost=20.0)
    assert calls == ["lora r=8 on q,v", "lora r=16 all-linear"]
    assert result["planning_seconds"] == 40 and result["run_budget_seconds"] == 80
    length = result["max_length"]
    assert result["probes"]["not_probed"] == [f"full at {length}"]
    assert result["probes"]["measured"] == [
        f"lora r=8 on q,v at {length} (20 s)",
        f"lora r=16 all-linear at {length} (20 s)",
    ]
    # sized to the 80 s left: 80 x 0.92 - 26 s leaves 47.6 s of steps, 238 at 0.2 s (lora r=16, 2.97 epochs)
    assert result["method"] == "lora r=16 all-linear" and result["steps"] == 238
    assert result["predicted_seconds"] <= 80
    written = Path(result["config"]).read_text()
    planned = __import__("yaml").safe_load(written)
    assert planned["train"]["time_budget"] == 80 and planned["plan"]["budget_seconds"] == 80
    assert "this run gets 1m20s (train.time_budget)" in written
    assert "not probed, planning's share spent: full at" in written


def test_the_first_probe_may_run_past_the_share_and_the_budget_it_names_then_fits(tmp_path, make_config):
    # 50 s: planning's share is 20 s, but without one measurement nothing can be planned: the first probe (30 s)
    # runs on, no other starts, and the 20 s left do not hold the cheapest run (32.6 s at 92%)
    with pytest.raises(
        TunesmithError,
        match=r"no method fits in 50s .*planning took 30s, leaving the run 20s.* smallest budget that fits is 33s",
    ):
        plan_for(tmp_path, make_config, "50s", cost=30.0)
    # the named budget: the probe is cached, planning costs nothing, the run gets all 33 s
    result, calls = plan_for(tmp_path, make_config, "33s", cost=30.0)
    assert calls == [] and result["method"] == "lora r=8 on q,v" and result["run_budget_seconds"] == 33


def test_a_first_probe_that_outlasts_the_budget_is_stopped_at_its_end(tmp_path, make_config):
    with pytest.raises(
        TunesmithError,
        match=r"--time 40s ran out before any method was measured \(lora r=8 on q,v at \d+ \(stopped after 40 s\)"
        r".*--time 1m20s or more",
    ):
        plan_for(tmp_path, make_config, "40s", cost=60.0)


def test_a_budget_too_small_for_any_probe_is_refused_before_the_data_is_read(
    tmp_path, make_config, monkeypatch
):
    from tunesmith.commands import plan as plan_module

    def no_data_read(name):
        raise AssertionError("the data was read")

    monkeypatch.setattr(plan_module, "get_task", no_data_read)
    # no probe of this model measured here yet: the floor is 12 s, and probes get 40% of the budget
    with pytest.raises(
        TunesmithError,
        match=r"--time 20s is too short to measure anything: .*smallest budget that could fit is 30s \(--time 30s\)",
    ):
        plan_for(tmp_path, make_config, "20s")


def test_cached_probes_cost_nothing_and_are_reported_as_reused(tmp_path, make_config):
    first, calls = plan_for(tmp_path, make_config, "2m", cost=20.0)
    assert len(calls) == 2 and first["probes"]["reused"] == []
    again, calls = plan_for(tmp_path, make_config, "2m", cost=20.0)
    assert calls == ["full"]  # the two measured before are reused; full fits in the share now and is probed
    length = again["max_length"]
    assert again["probes"]["reused"] == [f"lora r=8 on q,v at {length}", f"lora r=16 all-linear at {length}"]
    assert again["planning_seconds"] == 20 and again["run_budget_seconds"] == 100
    assert "reused from the cache, costing nothing: lora r=8 on q,v at" in Path(again["config"]).read_text()
    # this model's probes took 20 s here: 40 s leaves planning 16 s, too little for one. With this data's probes
    # all cached, it is planned all the same (the run gets all of it) ...
    tiny, calls = plan_for(tmp_path, make_config, "40s", cost=20.0)
    assert calls == [] and tiny["planning_seconds"] == 0 and tiny["method"] == "lora r=8 on q,v"
    # ... and for other data, refused at once, naming the budget from the probes measured here
    with pytest.raises(
        TunesmithError, match=r"\(20 s, the fastest probe of this model measured here\).* 50s"
    ):
        plan_for(tmp_path, make_config, "40s", rows=200, cost=20.0)


def test_the_plan_predicts_inside_the_budget_and_writes_a_config_that_trains(tmp_path, make_config):
    result, _ = plan_for(tmp_path, make_config, "2m")
    assert result["predicted_seconds"] <= 120
    written = Path(result["config"]).read_text()
    assert written.startswith("# Written by `tunesmith plan`. --time counts planning and training together")
    assert "time_budget: 120" in written and "predicted_seconds" in written
    cfg = config_from_dict(__import__("yaml").safe_load(written))
    assert cfg.plan.predicted_seconds == result["predicted_seconds"]
    assert cfg.method.name == "full" and cfg.train.max_steps == result["steps"]
    assert cfg.train.eval_steps == result["steps"] // 5 and cfg.train.early_stopping_patience == 3
    # trained for a few of its steps only (the suite's time): the plan's record is what is checked here
    short = ["train.max_steps=6", "train.eval_steps=3", "train.save_steps=3"]
    summary = api.train(result["config"], overrides=short)
    record = summary["plan"]
    assert record["predicted_seconds"] == result["predicted_seconds"] and record["budget_seconds"] == 120
    assert record["actual_peak_memory_mb"] == summary["peak_memory_mb"]
    page = (Path(summary["run_dir"]) / "report.html").read_text()
    assert 'id="plan-table"' in page and f">{result['predicted_seconds']}<" in page
    comparison = Path(
        api.compare([summary["run_dir"], summary["run_dir"]], str(tmp_path / "c.html"))
    ).read_text()
    assert "predicted time s (plan)" in comparison
    assert record["time_error_percent"] == pytest.approx(
        100 * (record["actual_seconds"] - record["predicted_seconds"]) / record["predicted_seconds"], abs=0.1
    )


def test_an_epoch_counts_optimizer_steps_of_batch_times_accumulation(tmp_path, make_config):
    # a probe times optimizer steps: with 2 micro-batches of 4 a step takes 8 of the 320 rows, 40 steps an epoch
    large, _ = plan_for(tmp_path, make_config, "10m", grad_accum=2)
    assert (
        large["method"] == "full" and large["steps"] == 5 * 40
    )  # the generator's most epochs, at 40 a epoch


def test_a_budget_too_small_for_any_method_names_the_smallest_that_fits(tmp_path, make_config):
    # the cheapest rung needs 20 s + 6 s of evaluations + half an epoch, 40 steps x 0.1 s = 30 s, planned at 92%:
    # 32.6 s. Planning spent 10 s on two probes (full did not fit the share), which the cache saves next time.
    with pytest.raises(
        TunesmithError,
        match=r"no method fits in 30s .*planning took 10s, leaving the run 20s.* smallest budget that fits is 33s "
        r"\(--time 33s; its probes are cached now, so planning it takes about 0 s\)",
    ):
        plan_for(tmp_path, make_config, "30s", cost=5.0)


def test_a_probe_measures_a_real_short_run_in_its_own_process(tmp_path, make_config):
    raw = make_config(rows=24, train={"max_steps": None})
    rung = CAUSAL_LM.plan_ladder(None)[1]
    measured = run_probe(json.loads(json.dumps(raw)), rung, 64, steps=3)
    assert 0 < measured.seconds_per_step < 30
    assert measured.evaluation_seconds > 0 and measured.overhead_seconds > 0
    assert measured.peak_memory_mb > 100  # a process holding torch and the model
    assert measured.probe_seconds > measured.overhead_seconds
    started = time.time()
    with pytest.raises(ProbeOutOfTime):  # its process is stopped at the timeout, not waited for
        run_probe(json.loads(json.dumps(raw)), rung, 64, steps=3, timeout=1.0)
    assert time.time() - started < 5


def test_plan_refuses_a_budget_that_is_not_a_duration(tmp_path, make_config):
    with pytest.raises(TunesmithError, match="--time: 'soon' is not a duration"):
        plan(tmp_path / "x.yaml", "soon")


def test_a_sweep_with_time_ends_on_time_and_says_its_best_was_searched_at_reduced_size(tmp_path, tiny_model):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_sweep import write_config

    config = write_config(tmp_path, tiny_model, max_steps=3000, eval_steps=50)  # a trial alone: minutes
    started = time.time()
    result = api.sweep(config, trials=50, time_limit="35s")
    assert time.time() - started < 35 * 1.1
    finished = result["states"].get("COMPLETE", 0) + result["states"].get("PRUNED", 0)
    assert 1 <= finished < 50
    best = Path(result["best_config"]).read_text()
    assert best.startswith("# searched at reduced size: --time cut the trial at step")
    best_cfg = __import__("yaml").safe_load(best)
    assert best_cfg["train"]["max_steps"] == 3000 and "time_budget" not in best_cfg["train"]


def test_a_data_file_is_planned_for_its_guessed_task_with_class_weights_when_classes_are_uneven(
    tmp_path, tiny_bert, monkeypatch
):
    from conftest import topic_rows, write_jsonl

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))  # the probe cache of a bare data file

    rows = topic_rows(240)  # 80 of each label; keep all sport and 20 of the others (duplicates are removed)
    kept = {"sport": 80, "business": 20, "politics": 20}
    rows = [r for r in rows if (kept := {**kept, r["label"]: kept[r["label"]] - 1})[r["label"]] >= 0]
    data = write_jsonl(tmp_path / "topics.jsonl", rows)
    seen: list[tuple[str, int]] = []

    def probe(raw, rung, max_length, steps, timeout=None):
        seen.append((rung.label, max_length))
        assert raw["task"] == "text-classification" and raw["data"]["test_ratio"] == 0.1
        if rung.label == "features":
            return Measurement(0.0, 0.5, 10.0, 400.0, whole_run_seconds=12.0, cached_seconds=6.0)
        return Measurement(
            seconds_per_step=2.0, evaluation_seconds=0.5, overhead_seconds=10.0, peak_memory_mb=500
        )

    from tunesmith.commands import plan as plan_module

    clock = FakeClock()
    result = plan_module.plan(
        data, "40s", model=str(tiny_bert), output=tmp_path / "p.yaml", probe=probe, clock=clock
    )
    # features: 12 s and its pass over the test split fits 40 s x 0.92; no rung with epochs does (2 epochs of
    # about 13 steps of 2 s alone take over 50 s)
    assert result["method"] == "features"
    assert any(
        "the smallest: the loss is weighted by inverse class frequency" in r for r in result["reasons"]
    )
    planned = __import__("yaml").safe_load(Path(result["config"]).read_text())
    assert planned["train"]["class_weights"] is True and planned["method"]["name"] == "features"
    assert seen[0] == ("features", result["max_length"])


def test_a_planned_config_keeps_the_classification_section_it_was_given(tmp_path, tiny_bert, monkeypatch):
    import yaml

    from conftest import classification_config, topic_rows, write_jsonl

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    rows = [{"text": r["text"], "topic": r["label"]} for r in topic_rows(90)]
    raw = classification_config(
        tmp_path, tiny_bert, "text-classification", write_jsonl(tmp_path / "t.jsonl", rows)
    )
    raw["classification"] = {"label_field": "topic"}
    source = tmp_path / "topics.yaml"
    source.write_text(yaml.safe_dump(raw))
    probed = []

    def probe(raw, rung, max_length, steps, timeout=None):
        probed.append(raw["classification"])  # the probe's run reads the same column
        return Measurement(0.0, 0.5, 10.0, 400.0, whole_run_seconds=12.0, cached_seconds=6.0)

    from tunesmith.commands import plan as plan_module

    result = plan_module.plan(source, "40s", output=tmp_path / "p.yaml", probe=probe, clock=FakeClock())
    assert probed and all(section == {"label_field": "topic"} for section in probed)
    planned = config_from_dict(yaml.safe_load(Path(result["config"]).read_text()))
    assert planned.section("classification").label_field == "topic"


@pytest.mark.parametrize(
    ("row", "task"),
    [
        ({"prompt": "p", "response": "r"}, "causal-lm"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "causal-lm"),
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
        ({"source": "s", "target": "t"}, "seq2seq"),
        ({"audio": "a.wav", "text": "t"}, "speech-recognition"),
        ({"text": "t", "label": "l"}, "text-classification"),
        ({"image": "a.png", "label": "l"}, "image-classification"),
    ],
)
def test_a_tables_task_is_told_by_the_fields_the_tasks_declare(tmp_path, row, task):
    from tunesmith.commands.plan import guess_task

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert guess_task(path) == task


@pytest.mark.parametrize(
    ("files", "task"),
    [
        (["a.wav", "a.txt"], "speech-recognition"),  # clips with transcripts beside them
        (["yes/a.wav"], "audio-classification"),
        (["cat/a.png"], "image-classification"),
        (["sport/a.txt"], "text-classification"),
    ],
)
def test_a_folders_task_is_told_by_its_files(tmp_path, files, task):
    from tunesmith.commands.plan import guess_task

    for name in files:
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / name).write_text("")
    assert guess_task(tmp_path / "d") == task


def test_a_fitting_step_is_probed_at_each_length_that_fits_and_chosen_by_its_validation_score():
    from tunesmith.commands.plan import Shape, consider
    from tunesmith.tasks.base import Rung

    scores = {128: 0.97, 256: 0.95, 512: 0.99}
    seconds = {128: 30.0, 256: 70.0, 512: 400.0}  # 512, estimated at 2 x 70 s, does not fit: never probed
    probed = []

    def measure(rung, length, expected=0.0):
        probed.append(length)
        return Measurement(0.0, 0.0, 10.0, 500.0, seconds[length], 0.0, scores[length])

    chosen = consider(
        Rung("features", min_epochs=0.0), 512, [600] * 20, measure, 120, 8000, Shape(90, 10, 0, 8, 5)
    )
    assert probed == [128, 256] and chosen.max_length == 128
    assert "scored validation 0.9700 at 128, 0.9500 at 256" in chosen.reasons[0]


EXPECTED = [f"c{i % 4}" for i in range(200)]  # 200 validation examples of 4 classes


def answers(wrong: set[int]) -> dict:
    """A probe's validation answers: right except on the examples `wrong`."""
    predicted = [
        ("c1" if label == "c0" else "c0") if i in wrong else label for i, label in enumerate(EXPECTED)
    ]
    return {"expected": EXPECTED, "predicted": predicted}


COMMON = {0, 1, 2, 3}  # examples every length gets wrong


def test_the_paired_bootstrap_scores_macro_f1_and_bounds_the_difference_from_the_examples_both_got():
    from sklearn.metrics import f1_score

    from tunesmith.commands.plan import paired_bootstrap

    longer, shorter = answers(COMMON), answers(COMMON | set(range(10, 30)))  # 20 more right, none worse
    first, second, low = paired_bootstrap(EXPECTED, longer["predicted"], shorter["predicted"])
    assert first == pytest.approx(f1_score(EXPECTED, longer["predicted"], average="macro"))
    assert second == pytest.approx(f1_score(EXPECTED, shorter["predicted"], average="macro"))
    assert 0.04 < low < first - second  # 20 examples the other way: a gain beyond the noise
    assert paired_bootstrap(EXPECTED, longer["predicted"], shorter["predicted"])[2] == low  # seeded
    # 2 points of accuracy, but from 6 examples right against 2 wrong: the noise of 200 examples
    noisy = answers(COMMON | {50, 51})["predicted"], answers(COMMON | set(range(10, 16)))["predicted"]
    first, second, low = paired_bootstrap(EXPECTED, *noisy)
    assert first - second > 0.01 and low < 0


def test_a_richer_rung_reading_less_than_the_whole_run_rung_showed_matters_is_passed_over():
    from tunesmith.commands.plan import Option, Shape, choose, consider
    from tunesmith.tasks.base import Rung

    shape = Shape(90, 10, 0, 8, 5)

    def features(wrong: dict[int, set[int]], kept: bool = True):
        seconds = {128: 30.0, 256: 40.0, 512: 60.0}

        def measure(rung, length, expected=0.0):
            score = 1 - len(wrong[length]) / len(EXPECTED)  # accuracy stands in for macro-F1 here
            given = answers(wrong[length]) if kept else None
            return Measurement(0.0, 0.0, 10.0, 500.0, seconds[length], 0.0, score, given)

        return consider(Rung("features", min_epochs=0.0), 512, [600] * 20, measure, 600, 8000, shape)

    def full(length):
        return Option(Rung("full"), length, Measurement(1.0, 1.0, 10.0, 900.0), fits=True)

    needed = lambda option, length: 4000.0  # noqa: E731
    # over 512 tokens features gets 20 more of the 200 right than over 128 (and 256), none fewer: beyond the noise
    matters = {128: COMMON | set(range(10, 30)), 256: COMMON | set(range(30, 50)), 512: COMMON}
    reader = features(matters)
    assert reader.max_length == 512 and sorted(reader.answers) == [128, 256, 512]
    chosen = choose([reader, full(128)], needed)
    assert chosen is reader
    assert "not full: this budget fits it only over the first 128 tokens" in chosen.reasons[-1]
    from sklearn.metrics import f1_score

    over = {n: f1_score(EXPECTED, answers(matters[n])["predicted"], average="macro") for n in (128, 512)}
    assert (
        f"macro-F1 {over[512]:.4f} over 512 tokens against {over[128]:.4f} over 128 on the same 200 examples"
        in chosen.reasons[-1]
    )
    assert "one-sided 95% lower bound is +" in chosen.reasons[-1]
    assert "they would need, for the run alone: full about --time 66m40s" in chosen.reasons[-1]  # 4000 s
    # every richer rung that reads too little is named in one line
    lora = Option(Rung("lora r=8"), 128, Measurement(1.0, 1.0, 10.0, 900.0), fits=True)
    chosen = choose([features(matters), lora, full(128)], needed)
    assert (
        chosen.rung.label == "features" and "not full, lora r=8: this budget fits them" in chosen.reasons[-1]
    )
    # a cheaper rung that reads far enough is chosen over the richer ones passed over, and says why
    last_n = Option(Rung("last_n 2"), 512, Measurement(1.0, 1.0, 10.0, 900.0), fits=True)
    chosen = choose([features(matters), last_n, full(128)], needed)
    assert chosen is last_n and chosen.reasons[-1].startswith("not full: this budget fits it")
    # full over 256: features over 256 is itself beaten beyond the noise by 512, so full is still passed over
    assert choose([features(matters), full(256)], needed).rung.label == "features"
    # 2 points more over 512 (the old fixed rule passed full over at 1 point) but from 8 examples that differ:
    # within the noise, so full over 128 is chosen, and says so
    noisy = {128: COMMON | set(range(10, 16)), 256: COMMON | set(range(30, 50)), 512: COMMON | {50, 51}}
    chosen = choose([features(noisy), full(128)], needed)
    assert chosen.rung.label == "full" and "within the validation set's noise" in chosen.reasons[-1]
    # no answers to pair (a probe cached before they were kept): no evidence, the richer rung as before
    assert choose([features(matters, kept=False), full(128)], needed).rung.label == "full"
    # the richer rung reads as far as features' best: chosen
    assert choose([features(matters), full(512)], needed).rung.label == "full"
    # features best over the shortest length: nothing to pass over
    best_short = {128: COMMON, 256: COMMON | set(range(30, 50)), 512: COMMON | set(range(10, 30))}
    assert choose([features(best_short), full(128)], needed).rung.label == "full"


def test_plan_help_says_the_budget_counts_planning_and_the_probes_share(capsys):
    from tunesmith import cli
    from tunesmith.commands.plan import PROBE_SHARE

    with pytest.raises(SystemExit):
        cli._parser().parse_args(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "planning and training together" in text
    assert f"the probes get at most {PROBE_SHARE:.0%} of it (cached ones cost nothing)" in text


def test_a_features_probe_answers_each_validation_example_as_its_run_scored_them(tmp_path, tiny_bert):
    from sklearn.metrics import f1_score

    from conftest import classification_config, topic_rows, write_jsonl
    from tunesmith.registry import get_task

    rows = [
        {"text": r["text"], "topic": r["label"]} for r in topic_rows(60)
    ]  # predict reads the run's columns
    data = write_jsonl(tmp_path / "topics.jsonl", rows)
    raw = classification_config(tmp_path, tiny_bert, "text-classification", data, method={"name": "features"})
    raw["data"]["test_ratio"] = 0.0
    raw["classification"] = {"label_field": "topic"}
    cfg = config_from_dict(json.loads(json.dumps(raw)))
    features = get_task("text-classification").plan_ladder(cfg)[0]
    measured = run_probe(json.loads(json.dumps(raw)), features, 32, steps=8)
    assert measured.whole_run_seconds > 0 and measured.probe_seconds >= measured.whole_run_seconds
    given = measured.validation_answers
    validation = get_task("text-classification").validated_data(cfg).validation
    assert given["expected"] == [example.labels[0] for example in validation]
    # predict's answers, paired example by example, give back the score the run itself reported
    assert f1_score(given["expected"], given["predicted"], average="macro") == pytest.approx(
        measured.validation_score, abs=1e-6
    )


def test_a_longer_length_is_not_probed_when_its_probe_would_outlast_the_share_left():
    from tunesmith.commands.plan import Option, Shape, consider, probe_cost
    from tunesmith.tasks.base import Rung

    # every example 600 tokens: 256 reads twice the tokens of 128. The 128 probe took 40 s, 20 s of them embedding.
    at_128 = Measurement(0.0, 0.0, 30.0, 500.0, 30.0, 20.0, 0.9, None, probe_seconds=40.0)
    assert probe_cost(Option(Rung("features"), 128, at_128), [600] * 20, 256) == pytest.approx(60.0)
    steps = Measurement(1.0, 2.0, 25.0, 500.0, probe_seconds=40.0)  # 15 s of steps and evaluation
    assert probe_cost(Option(Rung("full"), 128, steps), [600] * 20, 512) == pytest.approx(40.0 + 15.0 * 3)
    asked = []

    def measure(rung, length, expected=0.0):
        asked.append((length, expected))
        return at_128 if expected <= 50 else None  # 50 s of planning's share left

    chosen = consider(
        Rung("features", min_epochs=0.0), 512, [600] * 20, measure, 600, 8000, Shape(90, 10, 0, 8, 5)
    )
    assert asked == [(128, 0.0), (256, pytest.approx(60.0))] and chosen.max_length == 128
    assert chosen.reasons[-1].endswith("over 256 it was not probed: planning's share of the budget was spent")


def test_a_probe_trains_and_validates_on_the_runs_own_rows_never_on_its_test_split(tmp_path, make_config):
    from tunesmith.commands.plan_probes import probe_config
    from tunesmith.registry import get_task

    def validation_of(raw):
        return [e.key for e in get_task("causal-lm").validated_data(config_from_dict(raw)).validation]

    rung = CAUSAL_LM.plan_ladder(None)[0]
    raw = make_config(rows=400, data={"test_ratio": 0.1})
    probe = probe_config(json.loads(json.dumps(raw)), rung, 64, tmp_path / "probe", 8)
    assert probe["data"]["test_ratio"] == 0.1  # the same test split held out: the same validation split
    assert validation_of(probe) == validation_of(raw)
    # a test file holds none of the training rows: left out of the probe (its pass is added back by the sizing)
    raw["data"] |= {"test_file": raw["data"]["train_file"], "test_ratio": 0.0}
    probe = probe_config(json.loads(json.dumps(raw)), rung, 64, tmp_path / "probe", 8)
    assert probe["data"]["test_file"] is None and probe["data"]["test_ratio"] == 0.0


def test_a_whole_run_is_sized_from_its_probe_less_the_embeddings_it_cached():
    from tunesmith.commands.plan import Shape, whole_run_seconds

    shape = Shape(train_rows=80, validation_rows=10, test_rows=10, batch=8, max_epochs=5)
    # a probe of 60 s, 36 s of it embedding the 90 training and validation rows (cached for the run)
    untested = Measurement(0.0, 1.0, 60.0, 500.0, 60.0, 36.0)
    assert whole_run_seconds(untested, shape) == pytest.approx(
        60 - 36 + 36 * 10 / 90
    )  # + the test split's pass
    tested = Measurement(0.0, 1.0, 60.0, 500.0, 60.0, 36.0, tested=True)
    assert whole_run_seconds(tested, shape) == pytest.approx(60 - 36)  # its test pass is in the 60 s
