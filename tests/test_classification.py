import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import classification_config, topic_rows, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.data.labelled import check_labelled, natural_order
from tunesmith.errors import TunesmithError
from tunesmith.tasks.classification.settings import ClassificationConfig
from tunesmith.tasks.classification.trainer import class_weights, layerwise_groups

FAST = {"epochs": 6, "eval_steps": 1000, "save_steps": 1000, "learning_rate": 1e-2}


def _train(tmp_path, tiny_bert, rows=96, **sections):
    data = write_jsonl(tmp_path / "train.jsonl", topic_rows(rows))
    sections["train"] = FAST | sections.get("train", {})
    raw = classification_config(tmp_path, tiny_bert, "text-classification", data, **sections)
    return api.train(config_from_dict(raw))


def _weights(folder) -> dict[str, torch.Tensor]:
    return dict(AutoModelForSequenceClassification.from_pretrained(folder).state_dict())


def _changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize(
    "strategy, trains",
    [
        ("head", lambda name: name.startswith("classifier.")),
        ("last_n", lambda name: name.startswith(("classifier.", "bert.pooler.", "bert.encoder.layer.2."))),
        ("full", lambda name: True),
    ],
)
def test_strategy_trains_exactly_its_weights(tmp_path, tiny_bert, strategy, trains):
    summary = _train(tmp_path, tiny_bert, method={"name": strategy, "last_n": 1})
    before, after = _weights(tiny_bert), _weights(f"{summary['run_dir']}/model")
    changed = _changed(before, after) - {"classifier.weight", "classifier.bias"}  # the head is new (3 labels)
    frozen = {name for name in before if not trains(name)}
    assert not changed & frozen, f"frozen weights changed: {sorted(changed & frozen)[:5]}"
    expected = {name for name in before if trains(name) and not name.startswith("classifier.")}
    # every weight meant to train moved, except position/type embeddings rows no example reaches
    assert len(changed & expected) >= 0.8 * len(expected)
    trainable = summary["parameters"]["trainable"]
    assert trainable == sum(after[name].numel() for name in after if trains(name))


def test_lora_keeps_the_body_and_trains_adapters_and_head(tmp_path, tiny_bert):
    from safetensors.torch import load_file

    summary = _train(tmp_path, tiny_bert, method={"name": "lora", "lora": {"r": 4, "alpha": 8}})
    adapter = load_file(f"{summary['run_dir']}/model/adapter_model.safetensors")
    assert any("lora_A" in name and ".encoder.layer." in name for name in adapter)
    assert any("classifier" in name for name in adapter)  # the new head is saved with the adapter
    assert not any("lora_" in name and "classifier" in name for name in adapter)  # head trained in full
    assert summary["parameters"]["trainable"] < 0.5 * summary["parameters"]["total"]


def test_full_learns_topics_and_names_survive_a_round_trip(tmp_path, tiny_bert):
    summary = _train(tmp_path, tiny_bert)
    assert summary["validation"]["accuracy"] >= 0.9
    model = AutoModelForSequenceClassification.from_pretrained(f"{summary['run_dir']}/model")
    assert model.config.id2label == {0: "business", 1: "politics", 2: "sport"}
    assert model.config.label2id == {"business": 0, "politics": 1, "sport": 2}
    evaluation = json.loads((tmp_path / "runs" / "run" / "evaluation.json").read_text())
    matrix = np.array(evaluation["confusion_matrix"])
    assert matrix.sum() == evaluation["examples"] == 24
    assert evaluation["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-6)
    assert (tmp_path / "runs" / "run" / "confusion_matrix.png").stat().st_size > 1000
    metrics = [
        json.loads(line) for line in (tmp_path / "runs" / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("eval_f1_macro" in record for record in metrics)


def test_predict_writes_labels_and_probabilities(tmp_path, tiny_bert):
    summary = _train(tmp_path, tiny_bert)
    inputs = write_jsonl(tmp_path / "new.jsonl", [{"text": "market shares rose"}, {"text": "team won match"}])
    result = api.predict(summary["run_dir"], inputs)
    records = [json.loads(line) for line in Path(result["output"]).read_text().splitlines()]
    assert [r["label"] for r in records] == ["business", "sport"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in records)
    assert records[0]["input"].endswith("new.jsonl:1")
    out_csv = tmp_path / "out.csv"
    api.predict(summary["run_dir"], inputs, out_csv)
    rows = list(csv.DictReader(out_csv.open()))
    assert rows[1]["label"] == "sport" and set(rows[0]) == {
        "input",
        "label",
        "p_business",
        "p_politics",
        "p_sport",
    }
    with pytest.raises(TunesmithError, match="already exists"):
        api.predict(summary["run_dir"], inputs, out_csv)  # never overwrites


def test_features_strategy_matches_scikit_learn_and_caches(tmp_path, tiny_bert):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tunesmith.methods.features import FeatureHead

    summary = _train(tmp_path, tiny_bert, method={"name": "features"})
    assert summary["parameters"]["trainable"] == 0
    assert not list((tmp_path / "runs" / "run" / "model").glob("*.safetensors"))  # no network weights written
    assert summary["validation"]["accuracy"] >= 0.9
    cached = list((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(cached) == 2  # train and validation embeddings
    features = np.load(cached[0])
    rng = np.random.default_rng(0)
    targets = np.arange(len(features)) % 3
    head, fitted = FeatureHead.fit(
        features,
        targets,
        config_from_dict(
            classification_config(
                tmp_path, tiny_bert, "text-classification", "x", method={"name": "features"}
            )
        ).method,
        False,
        0,
    )
    probe = features + rng.normal(size=features.shape)
    expected = fitted.predict_proba(StandardScaler().fit(features).transform(probe))
    from tunesmith.tasks.classification.metrics import probabilities

    assert np.allclose(probabilities(head.logits(probe), False), expected, atol=1e-6)
    # a second run embeds nothing new
    again = _train(tmp_path, tiny_bert, method={"name": "features"})
    assert again["validation"] == summary["validation"]
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 2
    assert isinstance(LogisticRegression, type)


def test_multi_label_text(tmp_path, tiny_bert):
    rows = [
        {"text": row["text"], "label": [row["label"]] + (["numbered"] if row["text"][-1] in "02468" else [])}
        for row in topic_rows(96)
    ]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    raw = classification_config(
        tmp_path,
        tiny_bert,
        "text-classification",
        data,
        classification={"multi_label": True},
        train=FAST | {"epochs": 10},
    )
    summary = api.train(config_from_dict(raw))
    assert summary["labels"] == ["business", "numbered", "politics", "sport"]
    assert summary["validation"]["f1_macro"] > 0.5
    inputs = write_jsonl(tmp_path / "new.jsonl", [{"text": "market shares rose 4"}])
    output = Path(api.predict(summary["run_dir"], inputs)["output"])
    record = json.loads(output.read_text().splitlines()[0])
    assert isinstance(record["label"], list) and "business" in record["label"]


def test_class_weights_and_layerwise_learning_rates(tiny_bert):
    weights = class_weights([0, 0, 0, 1], 2, multi_label=False)
    assert torch.allclose(weights, torch.tensor([4 / 6, 4 / 2]))
    pos = class_weights([[1, 0], [1, 1], [0, 0], [1, 0]], 2, multi_label=True)
    assert torch.allclose(pos, torch.tensor([1 / 3, 3 / 1]))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    groups = layerwise_groups(model, 1.0, 0.5, 0.0, set())
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert rate[id(named["classifier.weight"])] == 1.0
    assert rate[id(named["bert.encoder.layer.2.attention.self.query.weight"])] == 0.5
    assert rate[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == 0.125
    assert rate[id(named["bert.embeddings.word_embeddings.weight"])] == 0.0625


def test_layer_lr_decay_and_class_weights_train(tmp_path, tiny_bert):
    summary = _train(tmp_path, tiny_bert, train={"layer_lr_decay": 0.8, "class_weights": True})
    assert summary["status"] == "finished" and summary["validation"]["accuracy"] > 0.5


def test_label_order_is_natural():
    assert natural_order(["10", "2", "b", "1"]) == ["1", "2", "10", "b"]


def _data_cfg(tmp_path, **values):
    """The data and classification sections of a text-classification config, each with its keys of `values`."""
    raw = classification_config(tmp_path, tmp_path, "text-classification", values.pop("train_file"))
    raw["classification"] = {k: values.pop(k) for k in list(values) if k in ClassificationConfig.model_fields}
    raw["data"] |= values
    cfg = config_from_dict(raw)
    return cfg.data, cfg.section("classification")


def test_bad_text_rows_are_named_with_file_and_line(tmp_path):
    rows = [
        {"text": "team won", "label": "sport"},
        {"text": "", "label": "sport"},
        {"txt": "shares", "label": "business"},
        {"text": "vote", "lbl": "politics"},
        {"text": "market", "label": True},
        {"text": "shares rose", "label": "business"},
        "not json",
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    checked = check_labelled(*_data_cfg(tmp_path, train_file=str(train)), "text")
    problems = "\n".join(checked.problems)
    assert f"{train}:2: empty text in field 'text'" in problems
    assert f"{train}:3: missing text field 'text'" in problems and "set data.text_field" in problems
    assert f"{train}:4: missing label field 'label' (fields present: lbl, text)" in problems
    assert f"{train}:5: label field 'label' must be a name or a number" in problems
    assert f"{train}:7: invalid JSON" in problems
    assert len(checked.problems) == 5


def test_unknown_validation_label_and_too_few_labels(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", topic_rows(12))
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "weather rain", "label": "weather"}])
    checked = check_labelled(*_data_cfg(tmp_path, train_file=str(train), validation_file=str(val)), "text")
    assert checked.problems == [
        f"{val}:1: unknown label 'weather' (not in the training data: business, politics, sport); "
        "fix the label or add it to classification.labels"
    ]
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": f"a {i}", "label": "x"} for i in range(4)])
    with pytest.raises(TunesmithError, match="needs at least 2"):
        check_labelled(*_data_cfg(tmp_path, train_file=str(one)), "text")


def test_csv_multi_label_cells_and_class_report(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        "text,label\nteam won,sport|news\nshares rose,business\nvote,politics|news\nmarket,business\n"
    )
    checked = check_labelled(
        *_data_cfg(tmp_path, train_file=str(path), multi_label=True, validation_ratio=0.0), "text"
    )
    assert checked.report["labels"] == ["business", "news", "politics", "sport"]
    assert checked.report["train_classes"]["counts"] == {"business": 2, "news": 2, "politics": 1, "sport": 1}
    assert checked.report["train_classes"]["imbalance_ratio"] == 2.0


def test_stratified_split_keeps_every_class(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", topic_rows(60))
    checked = check_labelled(*_data_cfg(tmp_path, train_file=str(train), validation_ratio=0.2), "text")
    assert checked.report["validation_classes"]["counts"] == {"business": 4, "politics": 4, "sport": 4}


def test_config_rules_for_classification(tmp_path, tiny_bert):
    raw = classification_config(tmp_path, tiny_bert, "text-classification", "x.jsonl")
    raw["method"] = {"strategy": "last_n", "last_n": 1}
    cfg = config_from_dict(raw)
    assert cfg.method.name == "last_n" and cfg.method.section("freeze").last_n == 1
    assert cfg.data.on_overflow == "truncate"  # classification truncates (and counts) by default
    with pytest.raises(TunesmithError, match="either name or strategy"):
        config_from_dict(raw | {"method": {"name": "full", "strategy": "head"}})
    with pytest.raises(TunesmithError, match="features"):
        config_from_dict(
            {"model": {"name": "m"}, "data": {"train_file": "x"}, "method": {"name": "features"}}
        )


def test_a_head_for_other_labels_is_replaced_and_one_for_the_same_labels_kept(tmp_path, tiny_bert):
    from tunesmith.tasks.classification import fresh_head_unless_same_labels

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)  # saved with 2 generic labels
    before = model.classifier.weight.clone()
    assert fresh_head_unless_same_labels(model, str(tiny_bert), ["neg", "pos"]).startswith("new")
    assert not torch.equal(before, model.classifier.weight)
    summary = _train(tmp_path, tiny_bert, train={"epochs": 1})
    tuned = f"{summary['run_dir']}/model"
    model = AutoModelForSequenceClassification.from_pretrained(tuned)
    before = model.classifier.weight.clone()
    assert fresh_head_unless_same_labels(model, tuned, ["business", "politics", "sport"]).startswith("kept")
    assert torch.equal(before, model.classifier.weight)


def test_truncation_is_counted_in_the_data_report(tmp_path, tiny_bert):
    rows = topic_rows(40)
    rows[0]["text"] = " ".join(["market"] * 80)  # 82 tokens with [CLS]/[SEP], max_length is 32
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    raw = classification_config(tmp_path, tiny_bert, "text-classification", data, train=FAST | {"epochs": 1})
    summary = api.train(config_from_dict(raw))
    report = json.loads((Path(summary["run_dir"]) / "data_report.json").read_text())
    counts = [report["preprocessing"][split]["over_max_length"] for split in ("train", "validation")]
    assert sum(counts) == 1 and report["preprocessing"]["train"]["action"] == "truncated"
    assert (
        report["preprocessing"]["train"]["max_tokens"] == 82
        or report["preprocessing"]["validation"]["max_tokens"] == 82
    )


def test_text_pairs_reach_the_model_as_two_segments(tmp_path, tiny_bert):
    from tunesmith.tasks.modalities import TextModality

    rows = [
        {"premise": "team won", "hypothesis": "match lost", "label": "no"},
        {"premise": "vote", "label": "yes"},
        {"premise": "team won", "hypothesis": "team won", "label": "yes"},
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg, settings = _data_cfg(
        tmp_path,
        train_file=str(data),
        text_field="premise",
        text_pair_field="hypothesis",
        validation_ratio=0.0,
    )
    checked = check_labelled(cfg.model_copy(update={"on_error": "skip"}), settings, "text")
    assert checked.problems == [f"{data}:2: missing or empty text pair field 'hypothesis'"]
    modality = TextModality(
        str(tiny_bert),
        config_from_dict({"model": {"name": str(tiny_bert)}, "data": {"train_file": "x"}}).model,
        cfg,
        settings,
    )
    prepared = modality.prepare(checked.train[:1], {"no": 0, "yes": 1}, False, training=True)
    assert prepared.dataset[0]["token_type_ids"] == [
        0,
        0,
        0,
        0,
        1,
        1,
        1,
    ]  # [CLS] team won [SEP] match lost [SEP]


def test_generate_and_merge_refuse_classification_runs(tmp_path, tiny_bert):
    summary = _train(tmp_path, tiny_bert, method={"name": "features"})
    with pytest.raises(TunesmithError, match="use `tunesmith predict`"):
        api.generate(summary["run_dir"], ["hello"])
    with pytest.raises(TunesmithError, match="use `tunesmith predict`"):
        api.merge(summary["run_dir"])


def test_classification_run_resumes_exactly_where_it_stopped(tmp_path, tiny_bert):
    from test_train import StopAt

    data = write_jsonl(tmp_path / "train.jsonl", topic_rows(48))
    raw = classification_config(
        tmp_path,
        tiny_bert,
        "text-classification",
        data,
        train={"max_steps": 8, "eval_steps": 2, "save_steps": 4},
    )
    whole = api.train(config_from_dict(raw, overrides=["output.name=whole"]))
    stopped = api.train(config_from_dict(raw, overrides=["output.name=split"]), callbacks=[StopAt(4)])
    assert stopped["status"] == "stopped" and stopped["global_step"] == 4
    resumed = api.train(config_from_dict(raw, overrides=["output.name=split"]), resume=True)
    assert resumed["global_step"] == 8 and resumed["status"] == "finished"

    def losses(summary):
        metrics = (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, metrics) if "loss" in r}

    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-5)
    assert resumed["validation"]["accuracy"] == pytest.approx(whole["validation"]["accuracy"])


def test_head_tail_keeps_the_opening_and_the_end(tiny_bert):
    from tunesmith.config import DataConfig, ModelConfig
    from tunesmith.data.labelled import LabelledExample
    from tunesmith.tasks.modalities import TextModality, head_and_tail

    assert head_and_tail(list(range(100)), 16) == list(range(12)) + list(range(96, 100))
    data_cfg = DataConfig(train_file="unused.csv", max_length=16, on_overflow="head_tail")
    modality = TextModality(str(tiny_bert), ModelConfig(name=str(tiny_bert)), data_cfg)
    text = "team " * 40 + "election vote"  # the label-bearing words come last
    prepared = modality.prepare([LabelledExample("t:1", ("politics",), text)], {"politics": 0}, False, False)
    ids = prepared.dataset[0]["input_ids"]
    tokenizer = modality.processor
    assert len(ids) == 16 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids[-3:-1]) == "election vote"
    assert (
        prepared.report["over_max_length"] == 1 and prepared.report["action"] == "cut to their head and tail"
    )
    with pytest.raises(TunesmithError, match="head_tail is for text-classification"):
        config_from_dict(
            {"model": {"name": "m"}, "data": {"train_file": "t.jsonl", "on_overflow": "head_tail"}}
        )
