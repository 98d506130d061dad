"""Settings left unset are chosen per method and data size at run time, recorded, and never written back."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification

from conftest import classification_config, topic_rows, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.methods.features import FeatureHead, head_inputs, sentence_pooling, solve_head
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import defaults
from tunesmith.tasks.defaults import CLASSIFIER, GENERATOR


def _config(method: dict, train: dict | None = None, task: str = "text-classification"):
    raw = {"task": task, "model": {"name": "m"}, "data": {"train_file": "t.csv"}, "method": method}
    if train is not None:
        raw["train"] = train
    return config_from_dict(raw)


def _chosen(cfg, rows: int, kind: str = CLASSIFIER, validation: bool = True) -> dict:
    return {c.key: c.value for c in defaults.choose(cfg, rows, validation, kind)[1]}


def test_lora_on_a_small_classifier_gets_a_large_rate_more_epochs_and_early_stopping():
    chosen = _chosen(_config({"strategy": "lora"}), rows=40)
    assert chosen == {
        "train.learning_rate": 1e-3,
        "train.batch_size": 8,
        "train.epochs": 20.0,  # 5 steps per epoch: 300 steps would be 60 epochs, capped at 20
        "train.eval_steps": 5,  # once per epoch
        "train.early_stopping_patience": 4,
        "train.metric": "f1_macro",
        "train.warmup": 0.1,
    }


@pytest.mark.parametrize(
    "strategy, rate", [("full", 5e-5), ("last_n", 1e-4), ("head", 1e-3), ("lora", 1e-3), ("dora", 1e-3)]
)
def test_each_strategy_has_its_own_classifier_rate(strategy, rate):
    assert _chosen(_config({"strategy": strategy}), rows=40)["train.learning_rate"] == rate


def test_more_rows_mean_fewer_epochs_and_a_larger_batch():
    chosen = _chosen(_config({"strategy": "full"}), rows=5000)
    assert chosen["train.batch_size"] == 16 and chosen["train.epochs"] == 3.0  # 313 steps per epoch
    assert chosen["train.eval_steps"] == 313 * 3 // 5  # five evaluations when there are few epochs


def test_lora_rate_follows_alpha_over_r_for_classifiers_and_causal_lms():
    wide = {"name": "lora", "lora": {"r": 8, "alpha": 32}}  # alpha / r = 4: twice the default scale
    assert _chosen(_config(wide), rows=40)["train.learning_rate"] == 5e-4
    assert _chosen(_config(wide, task="causal-lm"), rows=40, kind=GENERATOR)["train.learning_rate"] == 1e-4
    assert (
        _chosen(_config({"name": "full"}, task="causal-lm"), rows=40, kind=GENERATOR)["train.learning_rate"]
        == 2e-5
    )


def test_a_small_causal_lm_set_trains_more_epochs_with_its_metric_and_warmup_untouched():
    chosen = _chosen(_config({"name": "lora"}, task="causal-lm"), rows=40, kind=GENERATOR)
    assert chosen["train.epochs"] == 5.0  # 10 steps per epoch (batch 4): 15 epochs wanted, capped at 5
    assert "train.metric" not in chosen and "train.warmup" not in chosen and "train.batch_size" not in chosen


def test_features_takes_no_gradient_steps_so_gets_no_learning_rate():
    assert "train.learning_rate" not in _chosen(_config({"strategy": "features"}), rows=40)


def test_anything_the_user_sets_wins_and_the_config_is_not_changed():
    cfg = _config({"strategy": "lora"}, {"learning_rate": 3e-4, "epochs": 2, "metric": "accuracy"})
    before = cfg.model_dump()
    run_cfg, choices = defaults.choose(cfg, 40, True, CLASSIFIER)
    assert [c.key for c in choices] == ["train.warmup"]  # the length of training was set: no early stopping
    assert run_cfg.train.learning_rate == 3e-4 and run_cfg.train.epochs == 2 and run_cfg.train.warmup == 0.1
    assert cfg.model_dump() == before and cfg.train.warmup == 0.03  # the validated config is untouched


def test_without_validation_there_is_no_evaluation_cadence_or_early_stopping():
    chosen = _chosen(_config({"strategy": "full"}), rows=40, validation=False)
    assert not {"train.eval_steps", "train.early_stopping_patience", "train.metric"} & set(chosen)


def test_a_solved_head_gives_the_logistic_regressions_own_scores(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = topic_rows(30)
    labels = sorted({r["label"] for r in rows})
    dataset = [dict(tokenizer(r["text"])) for r in rows]
    targets = np.array([labels.index(r["label"]) for r in rows])

    def collator(batch):
        return tokenizer.pad(batch, return_tensors="pt")

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, num_labels=3, ignore_mismatched_sizes=True
    )
    inputs = head_inputs(model, dataset, collator, 8)
    assert inputs.shape == (30, 32)  # BERT's head reads the pooler output
    method_cfg = _config({"strategy": "head"}).method
    solve_head(model, inputs, targets, method_cfg, multi_label=False, seed=0)
    expected = FeatureHead.fit(inputs, targets, method_cfg, False, 0)[0].logits(inputs)
    with torch.no_grad():
        logits = model(**collator(dataset)).logits.numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def _train(tmp_path, tiny_bert, method: dict, train: dict, name: str = "c"):
    data = write_jsonl(tmp_path / "train.jsonl", topic_rows(60))
    raw = classification_config(tmp_path, tiny_bert, "text-classification", data, method=method)
    raw["train"] = train  # only what the test sets: everything else is left to the defaults
    raw["output"]["name"] = name
    return api.train(config_from_dict(raw))


def test_a_run_records_what_was_chosen_and_keeps_config_yaml_as_written(tmp_path, tiny_bert, capsys):
    summary = _train(tmp_path, tiny_bert, {"name": "full"}, {"precision": "fp32"})
    chosen = summary["defaults"]
    assert (
        chosen["train.learning_rate"]["value"] == 5e-5
        and "full on a classifier" in chosen["train.learning_rate"]["why"]
    )
    assert (
        chosen["train.epochs"]["value"] == 20.0 and chosen["train.eval_steps"]["value"] == 6
    )  # 45 rows, batch 8
    out = capsys.readouterr().out
    assert "default: train.learning_rate = 5e-05" in out
    run = Path(summary["run_dir"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"] == {"precision": "fp32"}  # as the user wrote it: the choices live in run.json
    evaluated = [r["step"] for r in RunFolder(run).read_metrics() if "eval_f1_macro" in r]
    assert evaluated and all(step % 6 == 0 for step in evaluated)  # once per epoch, on macro-F1
    assert "Chosen for this run" in (run / "report.html").read_text()


def test_an_unset_head_is_solved_without_gradient_steps(tmp_path, tiny_bert):
    summary = _train(tmp_path, tiny_bert, {"name": "head"}, {"precision": "fp32"})
    assert summary["global_step"] == 0 and summary["defaults"]["method"]["value"] == "head solved"
    before = AutoModelForSequenceClassification.from_pretrained(tiny_bert).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(
        Path(summary["run_dir"]) / "model"
    ).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("classifier."))
    set_lr = _train(tmp_path, tiny_bert, {"name": "head"}, {"precision": "fp32", "learning_rate": 1e-2}, "d")
    assert set_lr["global_step"] > 0 and "method" not in set_lr["defaults"]  # a set rate: gradient steps


def test_a_head_on_a_mean_pooling_sentence_encoder_reads_the_mean_as_features_does(tmp_path, tiny_bert):
    """A sentence-transformers folder that pools by the mean: the solved head is fitted on the mean of token
    states (as `features`), not on BERT's pooler, and predicts exactly as the features run does."""
    import shutil

    encoder = tmp_path / "sentence-encoder"
    shutil.copytree(tiny_bert, encoder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append(
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    )
    (encoder / "modules.json").write_text(json.dumps(modules))
    (encoder / "1_Pooling").mkdir()
    (encoder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert sentence_pooling(str(encoder)) == "mean" and sentence_pooling(str(tiny_bert)) is None

    head = _train(tmp_path, encoder, {"name": "head"}, {"precision": "fp32"})
    features = _train(tmp_path, encoder, {"name": "features"}, {"precision": "fp32"}, "f")
    assert head["defaults"]["head input"]["value"] == "mean of token states"
    assert (Path(head["run_dir"]) / "model" / "features_head.json").exists()
    assert head["validation"] == features["validation"]
    rows = write_jsonl(tmp_path / "new.jsonl", topic_rows(12, seed=5))
    outputs = [tmp_path / "head.jsonl", tmp_path / "features.jsonl"]
    api.predict(head["run_dir"], rows, outputs[0])
    api.predict(features["run_dir"], rows, outputs[1])
    assert outputs[0].read_text() == outputs[1].read_text()
    with pytest.raises(TunesmithError, match="no tuned network to export"):
        api.export(head["run_dir"], "onnx")


def test_a_failed_start_leaves_no_run_folder_and_an_earlier_one_is_reused(tmp_path, tiny_bert):
    data = write_jsonl(tmp_path / "train.jsonl", topic_rows(30))
    raw = classification_config(tmp_path, tiny_bert, "text-classification", data)
    raw["model"]["name"] = str(tmp_path / "no-such-model")
    raw["output"]["name"] = "c"
    for _ in range(2):
        with pytest.raises(TunesmithError, match="model.name: .* does not exist"):
            api.train(config_from_dict(raw))
    runs = tmp_path / "runs"
    assert not runs.exists() or not list(runs.iterdir())
    cfg = config_from_dict(raw)
    (runs / "c").mkdir(parents=True)
    (runs / "c" / "config.yaml").write_text("a start that failed while loading the model\n")
    assert RunFolder.for_training(cfg, "run", resume=False).path == runs / "c"  # reused
    (runs / "c" / "run.json").write_text(json.dumps({"status": "running"}))
    assert RunFolder.for_training(cfg, "run", resume=False).path == runs / "c-2"  # a run that trained is kept
