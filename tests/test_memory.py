"""train.gradient_checkpointing: auto turns checkpointing on exactly when the activation estimate outgrows memory."""

from pathlib import Path
from types import SimpleNamespace

import yaml
from transformers import LlamaConfig

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.training import memory

LLAMA = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=400)


def test_activation_estimate_follows_the_formula():
    batch, sequence = 4, 100
    per_layer = sequence * batch * 32 * (34 + 5 * 4 * sequence / 32)
    logits = 2 * batch * sequence * 400 * 4
    assert memory.activation_bytes(LLAMA, batch, sequence, "fp32") == int(2 * (2 * per_layer) + logits)
    assert memory.activation_bytes(LLAMA, batch, sequence, "bf16") == int(2 * per_layer + logits)
    # Doubling the sequence more than doubles it (attention grows with the square of the length).
    assert memory.activation_bytes(LLAMA, 1, 2048, "fp32") > 2 * memory.activation_bytes(
        LLAMA, 1, 1024, "fp32"
    )


def test_auto_decides_from_free_memory(monkeypatch):
    needed = memory.activation_bytes(LLAMA, 4, 100, "fp32")
    monkeypatch.setattr(memory, "free_bytes", lambda: needed)  # activations would take all of it
    decision = memory.choose_checkpointing("auto", LLAMA, 4, 100, "fp32")
    assert decision["enabled"] and "exceed" in decision["reason"]
    monkeypatch.setattr(memory, "free_bytes", lambda: 3 * needed)
    assert not memory.choose_checkpointing("auto", LLAMA, 4, 100, "fp32")["enabled"]
    assert memory.choose_checkpointing(True, LLAMA, 4, 100, "fp32") == {
        "enabled": True,
        "reason": "set in the config",
    }
    assert not memory.choose_checkpointing(False, LLAMA, 4, 100, "fp32")["enabled"]
    convolutional = SimpleNamespace(hidden_sizes=[64, 128], depths=[2, 2])  # ResNet-like: no layers/heads
    assert memory.activation_bytes(convolutional, 4, 100, "fp32") is None
    assert not memory.choose_checkpointing("auto", convolutional, 4, 100, "fp32")["enabled"]


def test_auto_turns_checkpointing_on_in_a_run_when_memory_is_short(make_config, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda: 2**20)  # 1 MB free: a step's activations will not fit
    raw = make_config(rows=16, train={"max_steps": 2}, eval={"samples": 0})
    summary = api.train(config_from_dict(raw))
    decision = summary["gradient_checkpointing"]
    assert decision["enabled"] is True and decision["free_memory_mb"] == 1.0
    assert summary["validation_loss_after"] < summary["validation_loss_before"]  # the adapter still trains
    saved = yaml.safe_load((Path(summary["run_dir"]) / "config.yaml").read_text())
    assert "gradient_checkpointing" not in saved["train"]  # as the user wrote it (unset: auto), not the decision


def test_auto_leaves_it_off_with_room(make_config, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda: 64 * 2**30)
    raw = make_config(rows=16, train={"max_steps": 1}, eval={"samples": 0})
    assert api.train(config_from_dict(raw))["gradient_checkpointing"]["enabled"] is False
