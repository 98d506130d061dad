"""task: preference end to end on the tiny model: the run folder, metrics.jsonl, the reference, eval and errors."""

import json
from pathlib import Path

import pytest

from conftest import write_jsonl
from test_preference import preference_rows
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.tasks.preference.losses import LOSSES


def preference_config(tmp_path, tiny_model, rows: int = 24, **sections) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_file = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(rows))
    raw = {
        "task": "preference",
        "model": {"name": str(tiny_model)},
        "data": {"train_file": str(data_file), "validation_ratio": 0.25, "max_length": 128},
        "method": {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "preference": {"loss": "dpo", "beta": 0.5},
        "train": {
            "batch_size": 4,
            "max_steps": 4,
            "learning_rate": 5e-2,
            "precision": "fp32",
            "logging_steps": 1,
            "eval_steps": 2,
            "warmup": 0,
        },
        "eval": {"samples": 1, "max_new_tokens": 4, "batch_size": 8},
        "output": {"dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dpo_with_lora_logs_rewards_at_every_evaluation(tmp_path, tiny_model):
    summary = api.train(config_from_dict(preference_config(tmp_path, tiny_model)))
    assert summary["status"] == "finished" and summary["global_step"] == 4
    assert summary["preference"]["reference"] == "the same weights with the adapter off"
    evaluations = [r for r in read_metrics(tmp_path / "runs" / "run") if "eval_loss" in r]
    assert [r["step"] for r in evaluations] == [0, 2, 4]
    first, last = evaluations[0], evaluations[-1]
    # Before the first step the policy is its reference: every reward is 0 and the loss is log 2.
    assert first["eval_rewards/chosen"] == 0 and first["eval_rewards/margins"] == 0
    assert first["eval_loss"] == pytest.approx(0.693147, abs=1e-5)
    assert last["eval_rewards/margins"] > 0 and last["eval_loss"] < first["eval_loss"]
    for key in (
        "eval_rewards/accuracies",
        "eval_logps/chosen",
        "eval_logps/rejected",
        "eval_rewards/rejected",
    ):
        assert key in last
    train_logs = [r for r in read_metrics(tmp_path / "runs" / "run") if "loss" in r]
    assert all("rewards/margins" in r for r in train_logs)
    assert summary["pairs_before"]["pairs"] == summary["pairs_after"]["pairs"] == 6
    assert (tmp_path / "runs" / "run" / "model" / "adapter_config.json").exists()
    report = (tmp_path / "runs" / "run" / "report.html").read_text()
    assert 'id="plot-metrics"' in report and "eval_rewards/accuracies" in report  # curves and the table


def test_full_fine_tune_uses_a_frozen_copy_or_precomputed_reference(tmp_path, tiny_model):
    live = preference_config(tmp_path / "a", tiny_model, method={"name": "full"})
    cached = preference_config(
        tmp_path / "b", tiny_model, method={"name": "full"}, preference={"precompute_reference": True}
    )
    first = api.train(config_from_dict(live))
    second = api.train(config_from_dict(cached))
    assert first["preference"]["reference"] == "a frozen copy of the base"
    assert second["preference"]["reference"] == "precomputed once before training (the initial weights)"
    # The same reference either way: the same losses step by step.
    losses = [
        [r["loss"] for r in read_metrics(t / "runs" / "run") if "loss" in r]
        for t in (tmp_path / "a", tmp_path / "b")
    ]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert len(list((tmp_path / "b" / "cache" / "reference").glob("*.json"))) == 2  # train and validation


@pytest.mark.parametrize("loss", [name for name in LOSSES if name != "dpo"])  # dpo: the LoRA run above
def test_every_loss_lowers_its_validation_loss_and_widens_its_reward_margin(tmp_path, tiny_model, loss):
    # preference_rows: chosen answers are a few of the first words, rejected ones many of the last, so held-out
    # prompts share the pattern. Full fine-tuning reaches the LM head, where a word preference is learned in a few
    # steps (a LoRA on q_proj/v_proj moves ORPO's margin by less than its step-to-step noise in 4 steps).
    raw = preference_config(
        tmp_path,
        tiny_model,
        method={"name": "full"},
        preference={"loss": loss},
        train={"learning_rate": 5e-3},
    )
    summary = api.train(config_from_dict(raw))
    evaluations = [r for r in read_metrics(tmp_path / "runs" / "run") if "eval_loss" in r]
    first, last = evaluations[0], evaluations[-1]
    assert (first["step"], last["step"]) == (0, summary["global_step"]) == (0, 4)
    assert last["eval_loss"] < first["eval_loss"]
    assert last["eval_rewards/margins"] > first["eval_rewards/margins"] + 0.1  # measured: +0.15 to +1.05
    if LOSSES[loss].paired:  # the pairs' own metric: the chosen answer out-scores the rejected one on each
        assert last["eval_rewards/accuracies"] == 1.0
    assert ("eval_kl" in last) == (loss == "kto")


def test_bad_pairs_stop_the_run_naming_file_and_line(tmp_path, tiny_model):
    raw = preference_config(tmp_path, tiny_model)
    rows = preference_rows(24)
    rows[4] = {"prompt": "p", "chosen": "same", "rejected": "same"}
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(TunesmithError) as caught:
        api.train(config_from_dict(raw))
    assert f"{tmp_path / 'pairs.jsonl'}:5: 'chosen' and 'rejected' are identical" in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_config_refuses_what_would_cut_a_pair(tmp_path, tiny_model):
    raw = preference_config(tmp_path, tiny_model, data={"on_overflow": "truncate"})
    with pytest.raises(TunesmithError, match="would cut one answer of a pair"):
        config_from_dict(raw)


def test_eval_scores_base_and_tuned_on_held_out_pairs(tmp_path, tiny_model):
    summary = api.train(config_from_dict(preference_config(tmp_path, tiny_model)))
    result = api.evaluate(summary["run_dir"], baseline=True, generations=2)
    tuned, base = result["tuned"], result["baseline"]
    assert tuned["pairs"] == base["pairs"] == 6
    assert base["preference_accuracy"] == summary["pairs_before"]["preference_accuracy"]
    assert tuned["preference_accuracy"] == summary["pairs_after"]["preference_accuracy"]
    assert "generation_rougeL" in tuned and "preference_accuracy" in result["table"]
    generated = (Path(result["folder"]) / "generations.jsonl").read_text().splitlines()
    assert len(generated) == 2 and {"output", "base_output", "reference"} <= set(json.loads(generated[0]))


def test_quickstart_pairs_reuse_the_cached_base_answers(tmp_path):
    import yaml

    from tunesmith import quickstart_preference

    train, validation = quickstart_preference.headline_examples(
        4, 2, body_chars=quickstart_preference.BODY_CHARS
    )
    cache = tmp_path / "demo" / "data" / "base_answers.jsonl"
    cache.parent.mkdir(parents=True)
    write_jsonl(
        cache,
        [{"prompt": r["prompt"], "answer": f"long answer {i}"} for i, r in enumerate(train + validation)],
    )
    config = quickstart_preference.prepare(tmp_path / "demo", train=4, validation=2)
    pairs = [
        json.loads(line) for line in (tmp_path / "demo" / "data" / "train.jsonl").read_text().splitlines()
    ]
    assert [p["rejected"] for p in pairs] == [
        f"long answer {i}" for i in range(4)
    ]  # from the cache: no model ran
    assert [p["chosen"] for p in pairs] == [r["response"] for r in train]  # the real headlines
    assert config_from_dict(yaml.safe_load(config.read_text()), base=config.parent).task == "preference"


def test_the_shipped_base_answers_are_the_installed_models_and_cover_the_demo(tmp_path, monkeypatch):
    """The demo's rejected answers ship with tunesmith, keyed to the model that wrote them: they are used for the
    installed SmolLM2 (every demo prompt answered, no generation), and not for any other model."""
    from tunesmith import quickstart_preference as demo

    header = json.loads(demo.SHIPPED_ANSWERS.read_text().splitlines()[0])
    assert header["model"] == demo.model_identity(demo.smollm2_folder())
    train, validation = demo.headline_examples(120, 30, body_chars=demo.BODY_CHARS)
    prompts = [r["prompt"] for r in train + validation]
    shipped = demo.shipped_answers()
    assert set(prompts) <= set(shipped) and all(shipped[p].strip() for p in prompts)
    cache = tmp_path / "data" / "base_answers.jsonl"
    assert demo.base_answers(prompts[:3], cache) == [shipped[p] for p in prompts[:3]] and cache.exists()
    monkeypatch.setattr(demo, "model_identity", lambda folder: "another model")
    assert demo.shipped_answers() == {}


def test_skip_trains_on_the_good_pairs_and_counts_the_bad(tmp_path, tiny_model):
    from test_preference import bad_pairs_file

    rows = [json.loads(line) for line in bad_pairs_file(tmp_path).read_text().splitlines()]
    raw = preference_config(tmp_path, tiny_model, data={"on_error": "skip"})
    write_jsonl(tmp_path / "pairs.jsonl", rows + preference_rows(24)[10:])  # 4 bad rows among 24
    summary = api.train(config_from_dict(raw))
    assert summary["status"] == "finished" and summary["global_step"] == 4
    report = json.loads((tmp_path / "runs" / "run" / "data_report.json").read_text())
    assert report["bad_rows"] == 4
    assert report["train_pairs"] + report["validation_pairs"] == 20  # 24 rows read, the 4 bad ones skipped
    assert f"{tmp_path / 'pairs.jsonl'}:2: 'chosen' and 'rejected' are identical" in json.dumps(report)


def test_a_resumed_preference_run_logs_the_same_losses_as_an_uninterrupted_one(tmp_path, tiny_model):
    from test_train import StopAt

    raw = preference_config(tmp_path, tiny_model, rows=40, train={"max_steps": 8, "save_steps": 4})
    whole = api.train(config_from_dict(raw, overrides=["output.name=whole"]))
    stopped = api.train(config_from_dict(raw, overrides=["output.name=split"]), callbacks=[StopAt(4)])
    assert stopped["status"] == "stopped" and stopped["global_step"] == 4
    resumed = api.train(config_from_dict(raw, overrides=["output.name=split"]), resume=True)
    assert resumed["run_dir"] == stopped["run_dir"] and resumed["global_step"] == 8

    def logged(run_dir, key):
        return {
            r["step"]: r[key] for r in read_metrics(Path(run_dir)) if key in r and "train_runtime" not in r
        }

    for key in ("loss", "rewards/margins", "eval_loss", "eval_rewards/accuracies"):
        split, uninterrupted = logged(resumed["run_dir"], key), logged(whole["run_dir"], key)
        assert sorted(split) == sorted(uninterrupted) and len(split) >= 4, key
        for step, value in uninterrupted.items():
            assert split[step] == pytest.approx(value, abs=1e-5), (key, step)
    # the base's pair scores are kept from the first half, not recomputed from the half-trained weights
    assert resumed["pairs_before"] == whole["pairs_before"]
    assert resumed["pairs_after"] == pytest.approx(whole["pairs_after"], abs=1e-4)


def test_serve_answers_for_a_preference_run_as_generate_does(tmp_path, tiny_model):
    from fastapi.testclient import TestClient

    summary = api.train(config_from_dict(preference_config(tmp_path, tiny_model)))
    app = api.serve_app([summary["run_dir"]], max_tokens_cap=16)
    with TestClient(app) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["run"]
        reply = client.post(
            "/v1/chat/completions",
            json={
                "model": "run",
                "messages": [{"role": "user", "content": "pick one: a or b"}],
                "max_tokens": 6,
            },
        )
    assert reply.status_code == 200, reply.text
    expected = api.generate(summary["run_dir"], ["pick one: a or b"], max_new_tokens=6)[0]
    assert reply.json()["choices"][0]["message"]["content"] == expected


def test_a_sweep_maximizes_held_out_preference_accuracy(tmp_path, tiny_model):
    import yaml

    raw = preference_config(tmp_path, tiny_model, eval={"samples": 0})
    raw["sweep"] = {
        "space": {"train.learning_rate": {"choices": [1e-5, 5e-2]}},
        "trials": 2,
        "metric": "rewards/accuracies",
    }
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = api.sweep(path)
    assert result["metric"] == "eval_rewards/accuracies"
    records = json.loads((Path(result["folder"]) / "trials.json").read_text())
    assert len(records) == 2 and {r["state"] for r in records} == {"COMPLETE"}
    for record in records:  # each trial's value is its run's final held-out reward accuracy
        summary = json.loads(Path(record["run_dir"], "run.json").read_text())
        assert record["value"] == summary["validation"]["eval_rewards/accuracies"]
    assert result["best"]["value"] == max(r["value"] for r in records)


def test_two_processes_follow_one_process_losses_and_rewards(tmp_path, tiny_model):
    import os
    import subprocess
    import sys

    import yaml

    raw = preference_config(tmp_path, tiny_model, eval={"samples": 0})
    config = tmp_path / "pairs.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, nproc in (("one", 1), ("two", 2)):
        command = [sys.executable, "-m", "tunesmith.cli", "train", str(config), "--nproc", str(nproc)]
        result = subprocess.run(
            command + ["--set", f"output.name={name}"], env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    one, two = (read_metrics(tmp_path / "runs" / name) for name in ("one", "two"))
    # the global batch of 4 pairs is split 2 + 2; gradients, losses and each metric's average over all pairs
    # (summed over ranks before dividing) equal one process's
    for key in ("loss", "rewards/margins", "eval_loss", "eval_rewards/accuracies", "eval_logps/rejected"):
        single = {r["step"]: r[key] for r in one if key in r}
        double = {r["step"]: r[key] for r in two if key in r}
        assert sorted(single) == sorted(double) and single, key
        for step, value in single.items():
            assert double[step] == pytest.approx(value, abs=1e-4), (key, step)
    assert json.loads((tmp_path / "runs" / "two" / "run.json").read_text())["processes"] == 2
