"""The test split: held out before validation, never read in training or model selection, scored once at the
end; the final figures, `tunesmith eval`, report.html and the model card give its scores and say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import classification_config, topic_rows, write_jsonl
from test_preference_train import preference_config, read_metrics
from tunesmith import api
from tunesmith.config import DataConfig, config_from_dict, starter_config, starter_names
from tunesmith.data.labelled import check_labelled
from tunesmith.data.prepare import check_data
from tunesmith.errors import TunesmithError
from tunesmith.export.hub import model_card
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.classification.settings import ClassificationConfig
from tunesmith.tasks.preference.data import check_preference_data
from tunesmith.tasks.preference.settings import PreferenceConfig


def test_a_test_ratio_holds_out_examples_that_no_other_split_shares(tmp_path):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(50)]
    rows += rows[:5]  # duplicates of training rows must not reach the test split
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    checked = check_data(DataConfig(train_file=str(data), validation_ratio=0.2, test_ratio=0.2))
    keys = [{e.key for e in split} for split in (checked.train, checked.validation, checked.test)]
    assert not (keys[2] & (keys[0] | keys[1]))
    held_out = round(55 * 0.2)  # 11 rows, of which repeats of another row are dropped from the test side
    assert (
        len(checked.test)
        == checked.report["test_examples"]
        == held_out - checked.report["test_overlap_removed"]
    )
    assert len(checked.test) >= 8
    again = check_data(DataConfig(train_file=str(data), validation_ratio=0.2, test_ratio=0.2))
    assert [e.key for e in again.test] == [e.key for e in checked.test]  # seeded


def test_the_classification_test_split_keeps_every_class(tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", topic_rows(60))
    data_cfg = DataConfig(train_file=str(data), validation_ratio=0.2, test_ratio=0.2)
    checked = check_labelled(data_cfg, ClassificationConfig(), "text")
    assert checked.report["test_classes"]["counts"] == {"business": 4, "politics": 4, "sport": 4}


def test_test_and_validation_ratios_must_leave_training_data():
    with pytest.raises(TunesmithError, match="test_ratio"):
        config_from_dict(
            {"model": {"name": "m"}, "data": {"train_file": "x", "validation_ratio": 0.5, "test_ratio": 0.5}}
        )


def test_a_causal_lm_run_reports_test_scores_and_eval_reads_the_test_split(make_config):
    raw = make_config(rows=40, data={"test_ratio": 0.2})
    summary = api.train(config_from_dict(raw))
    run = RunFolder.open(summary["run_dir"])
    checked = check_data(run.load_config().data)
    assert summary["test"]["examples"] == len(checked.test) == 8
    assert summary["test_before"]["loss"] != summary["test"]["loss"]
    test_prompts = {e.messages[-2][1] for e in checked.test}
    assert {s["prompt"] for s in run.read_jsonl(run.samples)} <= test_prompts
    result = api.evaluate(summary["run_dir"], generations=0)
    assert result["data"] == "test split of the run" and result["examples"] == 8
    assert abs(result["tuned"]["loss"] - summary["test"]["loss"]) < 1e-6
    assert 'id="test-scores"' in (run.path / "report.html").read_text()
    assert "On the held-out test split" in model_card(run, "me/model")


def test_a_classification_run_scores_its_test_split_into_evaluation_json(tmp_path, tiny_bert):
    data = write_jsonl(tmp_path / "train.jsonl", topic_rows(96))
    raw = classification_config(tmp_path, tiny_bert, "text-classification", data)
    raw["data"]["test_ratio"] = 0.25
    raw["train"] |= {"epochs": 1}
    summary = api.train(config_from_dict(raw))
    folder = Path(summary["run_dir"])
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["split"] == "test" and evaluation["examples"] == summary["test"]["examples"] == 24
    assert json.loads((folder / "evaluation_validation.json").read_text())["split"] == "validation"
    assert summary["test"]["accuracy"] == evaluation["accuracy"]


def test_a_fresh_run_on_500_rows_reports_test_scores_with_no_setting(make_config, capsys):
    raw = make_config(rows=500)
    assert "test_ratio" not in raw["data"] and "test_file" not in raw["data"]
    summary = api.train(config_from_dict(raw))
    report = json.loads((Path(summary["run_dir"]) / "data_report.json").read_text())
    assert report["test_ratio"] == 0.1 and report["test_ratio_auto"] == "auto: 500 rows >= 300"
    assert summary["test"]["examples"] == report["test_examples"] == 50  # 10% of 500 distinct rows
    assert report["train_examples"] + report["validation_examples"] == 450
    assert summary["test"]["loss"] < summary["test_before"]["loss"]
    printed = capsys.readouterr().out
    assert printed.count("data: test split: 10% of train_file held out (auto: 500 rows >= 300)") == 1
    assert "data.test_ratio: 0 turns it off" in printed


def test_100_rows_get_no_test_split_by_default_and_say_so(make_config, capsys):
    summary = api.train(config_from_dict(make_config(rows=100)))
    report = json.loads((Path(summary["run_dir"]) / "data_report.json").read_text())
    assert report["test_ratio"] == 0.0 and report["test_split"] == "no test split"
    assert report["train_examples"] + report["validation_examples"] == 100  # nothing held back for testing
    assert summary.get("test") is None
    assert "data: no test split (auto: 100 rows < 300)" in capsys.readouterr().out


def test_every_starter_shows_the_test_keys_with_a_reason_and_loads():
    for name in starter_names():
        text = starter_config(name)
        for key in ("test_file", "test_ratio"):
            line = next((line for line in text.splitlines() if line.strip().startswith(f"{key}:")), "")
            assert "#" in line, f"{name}: data.{key} is missing or has no comment saying why"
        cfg = config_from_dict(yaml.safe_load(text))
        assert cfg.data.test_ratio == "auto" and cfg.data.test_file is None, name


def test_an_explicit_test_ratio_is_kept_whatever_the_size(tmp_path, capsys):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(400)]
    data = str(write_jsonl(tmp_path / "d.jsonl", rows))
    off = check_data(DataConfig(train_file=data, test_ratio=0))
    assert off.test == [] and "test_ratio_auto" not in off.report
    small = check_data(
        DataConfig(train_file=str(write_jsonl(tmp_path / "s.jsonl", rows[:50])), test_ratio=0.2)
    )
    assert len(small.test) == 10
    assert "auto" not in capsys.readouterr().out  # the user's own choice is not announced as ours


def test_auto_leaves_training_data_or_the_config_says_why():
    with pytest.raises(TunesmithError, match="test_ratio"):
        config_from_dict({"model": {"name": "m"}, "data": {"train_file": "x", "validation_ratio": 0.9}})


def test_a_preference_run_holds_out_test_prompts_and_scores_them_once_at_the_end(tmp_path, tiny_model):
    raw = preference_config(tmp_path, tiny_model, rows=40, data={"test_ratio": 0.2})
    checked = check_preference_data(config_from_dict(raw).data, PreferenceConfig())
    train_prompts = {e.prompt for e in checked.train + checked.validation}
    assert len(checked.test) == 8 and not train_prompts & {e.prompt for e in checked.test}
    summary = api.train(config_from_dict(raw))
    test = summary["test"]
    assert test["examples"] == 8 and {
        "loss",
        "reward_margin",
        "reward_accuracy",
        "preference_accuracy",
    } <= set(test)
    assert test["reward_margin"] > 0  # learned: chosen and rejected answers differ systematically
    assert not any(key.startswith("test") for r in read_metrics(Path(summary["run_dir"])) for key in r)
    result = api.evaluate(summary["run_dir"], generations=0)
    assert result["split"] == "test" and result["examples"] == 8
    assert result["tuned"]["preference_accuracy"] == test["preference_accuracy"]
    kto = check_preference_data(config_from_dict(raw).data, PreferenceConfig(loss="kto"))
    assert {e.prompt for e in kto.test} == {e.prompt for e in checked.test}  # KTO holds out the same prompts
