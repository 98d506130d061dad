"""data.on_overflow: windows: long texts cut into windows, trained on each, scored and predicted per text."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import TOPICS, classification_config, write_jsonl
from tunesmith import api
from tunesmith.config import DataConfig, ModelConfig, config_from_dict
from tunesmith.data.labelled import LabelledExample
from tunesmith.errors import TunesmithError
from tunesmith.tasks.classification.settings import ClassificationConfig
from tunesmith.tasks.modalities import Prepared, TextModality, window_scores


def _modality(tiny_bert, **settings) -> TextModality:
    data_cfg = DataConfig(train_file="unused.csv", max_length=16, on_overflow="windows")
    return TextModality(
        str(tiny_bert), ModelConfig(name=str(tiny_bert)), data_cfg, ClassificationConfig(**settings)
    )


def test_windows_cover_every_token_and_training_keeps_the_first_ones(tiny_bert):
    modality = _modality(tiny_bert, max_windows=2)
    tokenizer = modality.processor
    long_text = " ".join(f"word{i % 7} team" for i in range(30))
    examples = [
        LabelledExample("t:1", ("sport",), long_text),
        LabelledExample("t:2", ("business",), "shares"),
    ]
    content = tokenizer(long_text, add_special_tokens=False)["input_ids"]

    every = modality.prepare(examples, {"business": 0, "sport": 1}, False, training=False)
    windows = [row["input_ids"] for row in every.dataset]
    assert len(content) > 3 * 14  # so the long text needs more than two windows
    assert every.groups == [0] * (len(windows) - 1) + [1]
    assert all(
        len(w) <= 16 and w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id for w in windows
    )
    assert sum((w[1:-1] for w in windows[:-1]), []) == content  # nothing lost, nothing repeated
    assert every.targets == [1] * (len(windows) - 1) + [0] and every.text_targets == [1, 0]
    assert every.report["over_max_length"] == 1 and every.report["action"] == "split into windows"
    assert every.report["windows"] == len(windows)

    training = modality.prepare(examples, {"business": 0, "sport": 1}, False, training=True)
    assert training.groups == [0, 0, 1]
    assert [row["input_ids"] for row in training.dataset] == windows[:2] + windows[-1:]
    assert training.report["max_windows"] == 2 and training.report["texts_over_max_windows"] == 1


def test_a_text_scores_the_mean_of_its_windows_log_probabilities():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 1.0], [-3.0, 0.0, 3.0]])
    prepared = Prepared(list(range(4)), [0, 0, 1, 2], groups=[0, 0, 1, 2])
    scores = prepared.per_text(window_scores(logits, multi_label=False))
    log_probs = torch.log_softmax(torch.tensor(logits), dim=-1).numpy()
    assert scores.shape == (3, 3)
    assert scores[0] == pytest.approx((log_probs[0] + log_probs[1]) / 2)
    assert scores[2] == pytest.approx(log_probs[3])
    assert prepared.text_targets == [0, 1, 2]
    assert Prepared([1], [0]).per_text(logits) is logits  # no windows: unchanged


def _label_at_the_end(count: int, seed: int) -> list[dict]:
    """The topic words come after 18 filler words: invisible to the first 16-token window, in the second."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    rows = []
    for index in range(count):
        label = names[index % len(names)]
        filler = " ".join(rng.choice(["the", "a", "while", "and", "about", "to", "on"]) for _ in range(18))
        topic = " ".join(rng.choice(TOPICS[label]) for _ in range(3))
        rows.append({"text": f"{filler} {topic}", "label": label})
    return rows


def _train(tmp_path, tiny_bert, overflow: str, method: str = "full") -> dict:
    data = write_jsonl(tmp_path / "train.jsonl", _label_at_the_end(96, seed=1))
    raw = classification_config(
        tmp_path,
        tiny_bert,
        "text-classification",
        data,
        method={"name": method},
        train={"epochs": 20, "eval_steps": 1000, "save_steps": 1000, "learning_rate": 3e-3},
    )
    raw["data"] |= {"max_length": 16, "on_overflow": overflow}
    raw["output"]["name"] = f"{overflow}-{method}"
    return api.train(config_from_dict(raw))


def test_windows_read_what_truncation_cuts_off_and_predict_whole_texts(tmp_path, tiny_bert):
    truncated = _train(tmp_path, tiny_bert, "truncate")
    windows = _train(tmp_path, tiny_bert, "windows")
    assert truncated["validation"]["accuracy"] <= 0.6  # the label word is never seen
    assert windows["validation"]["accuracy"] >= 0.9
    run = Path(windows["run_dir"])
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["examples"] == 24  # texts, not windows
    report = json.loads((run / "data_report.json").read_text())["preprocessing"]
    assert report["validation"]["windows"] == 2 * 24 and report["train"]["windows"] == 2 * 72
    assert "<th>train: windows</th>" in (run / "report.html").read_text()

    inputs = write_jsonl(tmp_path / "new.jsonl", [{"text": r["text"]} for r in _label_at_the_end(6, seed=9)])
    result = api.predict(run, inputs)
    records = [json.loads(line) for line in Path(result["output"]).read_text().splitlines()]
    assert len(records) == 6
    # the same numbers by hand: every window through the saved model, log-probabilities averaged
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    modality = TextModality(
        str(run / "model"),
        ModelConfig(name=str(tiny_bert)),
        DataConfig(**{"train_file": "unused", "max_length": 16, "on_overflow": "windows"}),
        ClassificationConfig(),
    )
    for record, row in zip(records, _label_at_the_end(6, seed=9), strict=True):
        prepared = modality.prepare([LabelledExample("x", (), row["text"])], {}, False, training=False)
        with torch.no_grad():
            logits = model(**modality.collator(model)(prepared.dataset)).logits
        expected = torch.softmax(torch.log_softmax(logits, -1).mean(0), -1)
        names = [model.config.id2label[i] for i in range(3)]
        assert [record["probabilities"][n] for n in names] == pytest.approx(expected.tolist(), abs=1e-5)
        assert record["label"] == names[int(expected.argmax())]


def test_features_average_the_windows_embeddings(tmp_path, tiny_bert):
    summary = _train(tmp_path, tiny_bert, "windows", method="features")
    evaluation = json.loads((Path(summary["run_dir"]) / "evaluation.json").read_text())
    assert evaluation["examples"] == 24


def test_windows_are_for_single_text_classification():
    with pytest.raises(TunesmithError, match="windows is for text-classification"):
        config_from_dict(
            {"model": {"name": "m"}, "data": {"train_file": "t.jsonl", "on_overflow": "windows"}}
        )
