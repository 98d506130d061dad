"""Exports: every format reloads and matches PyTorch's logits; int8 reports size and metric change."""

import json
from pathlib import Path

import pytest

from conftest import classification_config, topic_rows, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, tiny_model):
    from conftest import tiny_config

    folder = tmp_path_factory.mktemp("lm")
    raw = tiny_config(folder, tiny_model, 24, train={"max_steps": 2}, eval={"samples": 0})
    return api.train(config_from_dict(raw))["run_dir"]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("classifier")
    data = write_jsonl(folder / "train.jsonl", topic_rows(60))
    raw = classification_config(
        folder,
        tiny_bert,
        "text-classification",
        data,
        method={"name": "lora", "lora": {"r": 4, "alpha": 8}},
        train={"epochs": 4, "learning_rate": 1e-2, "eval_steps": 1000, "save_steps": 1000},
    )
    return api.train(config_from_dict(raw))["run_dir"]


@pytest.mark.parametrize("fmt", ["safetensors", "onnx", "torchscript"])
def test_causal_lm_exports_match_pytorch(lm_run, fmt):
    result = api.export(lm_run, fmt)
    assert result["parity"]["max_abs_logit_difference"] < 1e-4
    record = json.loads((Path(result["output"]) / "export.json").read_text())
    assert record["format"] == fmt and record["source_run"] == lm_run
    assert (Path(result["output"]) / "tokenizer.json").exists()  # the tokenizer travels with the model
    with pytest.raises(TunesmithError, match="already exists"):
        api.export(lm_run, fmt)  # never overwrites


def test_lora_classifier_onnx_int8_reports_size_and_accuracy(classifier_run):
    result = api.export(classifier_run, "onnx", quantize="int8")
    assert result["parity"]["max_abs_logit_difference"] < 1e-4  # adapters merged before export
    quantization = result["quantization"]
    assert quantization["size_mb_after"] < quantization["size_mb_before"]
    assert quantization["metric"] == "validation_accuracy" and 0 <= quantization["after"] <= 1
    # The fp32 figure is measured on the exported ONNX graph: it must match what the trainer measured in PyTorch.
    summary = json.loads((Path(classifier_run) / "run.json").read_text())
    assert quantization["before"] == pytest.approx(summary["validation"]["accuracy"], abs=1e-6)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(Path(result["output"]) / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == result["inputs"]


def test_export_refuses_what_it_cannot_do(lm_run):
    with pytest.raises(TunesmithError, match="applies to --format onnx"):
        api.export(lm_run, "torchscript", quantize="int8")
    with pytest.raises(TunesmithError, match="unknown"):
        api.export(lm_run, "tflite")


def test_push_dry_run_writes_model_and_card(classifier_run, tmp_path):
    result = api.push(classifier_run, "someone/topics", dry_run=True, output=tmp_path / "upload")
    folder = Path(result["folder"])
    assert not result["uploaded"]
    assert (folder / "adapter_model.safetensors").exists() and (folder / "tunesmith_config.yaml").exists()
    card = (folder / "README.md").read_text()
    summary = json.loads((Path(classifier_run) / "run.json").read_text())
    assert "library_name: peft" in card and "pipeline_tag: text-classification" in card
    assert f"validation accuracy: {summary['validation']['accuracy']:.4f}" in card
    assert "business (" in card and "## Limitations" in card and "task: text-classification" in card


def test_push_offline_is_a_clear_error(classifier_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        TunesmithError, match="HF_HUB_OFFLINE=1 is set, so nothing can be uploaded; the folder is ready"
    ):
        api.push(classifier_run, "someone/topics", output=tmp_path / "upload")
    with pytest.raises(TunesmithError, match="expected OWNER/NAME"):
        api.push(classifier_run, "no-owner", dry_run=True)


def test_int8_export_is_refused_past_its_max_drop(classifier_run, tmp_path):
    measured = api.export(classifier_run, "onnx", output=tmp_path / "measured", quantize="int8")[
        "quantization"
    ]
    # Just below what int8 lost (or gained) in accuracy on the validation split: the export must be refused.
    strict = measured["before"] - measured["after"] - 0.01
    with pytest.raises(TunesmithError, match=r"--quantize int8 refused: validation_accuracy"):
        api.export(classifier_run, "onnx", output=tmp_path / "strict", quantize="int8", max_drop=strict)
    assert not (tmp_path / "strict").exists() and not (tmp_path / "strict.partial").exists()


def test_int8_gate_counts_falling_accuracy_and_rising_loss_as_drops():
    from tunesmith.export.formats import _int8_gate

    assert _int8_gate("validation_accuracy", 0.90, 0.89, None)["drop"] == pytest.approx(0.01)
    assert _int8_gate("validation_loss", 2.0, 1.9, 0.0)["drop"] == pytest.approx(-0.1)
    with pytest.raises(TunesmithError, match="a drop of 0.05 > --max-drop 0.02"):
        _int8_gate("validation_accuracy", 0.90, 0.85, None)
    with pytest.raises(TunesmithError, match="a drop of 0.1 > --max-drop 0.05"):
        _int8_gate("validation_loss", 2.0, 2.1, None)
    assert (
        _int8_gate("validation_loss", None, None, None)["drop"] is None
    )  # no validation split: not measured
