"""The collapse alarm: a model that gives one answer whatever the input is said live, in run.json and report.html."""

import html
import json
from pathlib import Path

import numpy as np

from conftest import classification_config, topic_rows, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.evaluation.collapse import classifier_alarm, generator_alarm

LABELS = ["business", "politics", "sport"]


def _train(tmp_path, tiny_bert, **train):
    data = write_jsonl(tmp_path / "train.jsonl", topic_rows(96))
    raw = classification_config(tmp_path, tiny_bert, "text-classification", data, train=train)
    return api.train(config_from_dict(raw))


def test_predictions_nearly_all_one_class_raise_the_alarm():
    targets = np.array([0, 1, 2] * 10)
    predictions = np.array([1] * 28 + [0, 2])
    alarm = classifier_alarm(targets, predictions, LABELS, 0.2, multi_label=False)
    assert alarm["kind"] == "one class"
    assert "93% of the 30 validation predictions are 'politics'" in alarm["seen"]
    assert {c["cause"] for c in alarm["causes"]} == {"learning rate", "too few steps", "class imbalance"}


def test_a_good_classifier_and_a_truly_dominant_class_predicted_well_raise_none():
    targets = np.array([0, 1, 2] * 10)
    assert classifier_alarm(targets, targets, LABELS, 1.0, multi_label=False) is None
    dominant = np.array([0] * 27 + [1, 2, 2])  # the data are 90% one class and the model follows them
    assert classifier_alarm(dominant, dominant, LABELS, 1.0, multi_label=False) is None


def test_macro_f1_at_chance_raises_the_alarm_even_when_predictions_are_spread():
    targets = np.array([0, 1, 2] * 10)
    shuffled = np.roll(targets, 1)  # every prediction wrong, classes spread evenly
    alarm = classifier_alarm(targets, shuffled, LABELS, 0.0, multi_label=False)
    assert alarm["kind"] == "chance level" and "guessing among 3 classes" in alarm["seen"]


def test_multi_label_predictions_of_no_label_at_all_raise_the_alarm():
    targets = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]] * 5)
    alarm = classifier_alarm(targets, np.zeros_like(targets), LABELS, 0.0, multi_label=True)
    assert alarm["kind"] == "one class" and "no label at all" in alarm["seen"]


def test_generations_all_empty_or_all_the_same_raise_the_alarm():
    assert generator_alarm(["", "  ", "\n"])["kind"] == "empty"
    assert generator_alarm(["the cat", "the cat ", "the cat"])["kind"] == "identical"
    assert generator_alarm(["the cat", "a dog"]) is None
    assert generator_alarm(["only one sample"]) is None  # one sample cannot show a collapse


def test_a_too_low_learning_rate_collapses_and_the_alarm_is_said_recorded_and_shown(
    tmp_path, tiny_bert, capsys
):
    summary = _train(tmp_path, tiny_bert, learning_rate=1e-9, epochs=1)
    run = Path(summary["run_dir"])
    alarm = json.loads((run / "run.json").read_text())["collapse"]
    assert alarm["kind"] == "one class"
    assert capsys.readouterr().out.count("COLLAPSE:") == 1  # said once
    report = html.unescape((run / "report.html").read_text())
    assert 'id="collapse-alarm"' in report and alarm["seen"] in report
    assert report.index('id="collapse-alarm"') < report.index('id="summary"')  # at the top
    assert "train.class_weights: true" in report


def test_a_healthy_run_raises_no_alarm(tmp_path, tiny_bert, capsys):
    summary = _train(tmp_path, tiny_bert, learning_rate=1e-2, epochs=6, eval_steps=1000, save_steps=1000)
    assert summary["validation"]["accuracy"] > 0.9
    assert "collapse" not in summary
    assert "COLLAPSE" not in capsys.readouterr().out
    assert 'id="collapse-alarm"' not in (Path(summary["run_dir"]) / "report.html").read_text()


def test_identical_generations_after_training_are_recorded(make_config, monkeypatch):
    from tunesmith.tasks import causal_lm

    monkeypatch.setattr(causal_lm, "generate", lambda model, renderer, prompts, n: ["news"] * len(prompts))
    summary = api.train(config_from_dict(make_config(rows=20, eval={"samples": 3})))
    assert summary["collapse"]["kind"] == "identical"
    assert "'news'" in summary["collapse"]["seen"]
