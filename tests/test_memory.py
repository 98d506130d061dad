"""train.gradient_checkpointing: auto turns checkpointing on exactly when the activation estimate outgrows memory."""

from pathlib import Path
from types import SimpleNamespace

import yaml
from transformers import LlamaConfig

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.training import memory

LLAMA = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=400)
SMALL = LlamaConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=400,
    tie_word_embeddings=False,
)


def test_activation_estimate_matches_numbers_worked_by_hand():
    # s*b*h*(34 + 5*a*s/h) = 100*4*32*(34 + 5*4*100/32) = 12800 * 96.5 = 1,235,200 bytes per layer in 16 bits;
    # logits and their gradient in fp32: 2 * 4*100 * 400 * 4 = 1,280,000 bytes.
    assert memory.activation_bytes(LLAMA, 4, 100, "bf16") == 2 * 1_235_200 + 1_280_000 == 3_750_400
    assert memory.activation_bytes(LLAMA, 4, 100, "fp32") == 2 * 2 * 1_235_200 + 1_280_000 == 6_220_800
    # Doubling the sequence more than doubles it (attention grows with the square of the length).
    assert memory.activation_bytes(LLAMA, 1, 2048, "fp32") > 2 * memory.activation_bytes(
        LLAMA, 1, 1024, "fp32"
    )


def test_activation_estimate_errs_high_but_not_wildly_against_a_measurement():
    """What autograd actually keeps for backward in one training forward, counted tensor by tensor."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(SMALL).train()
    ids = torch.randint(0, 400, (4, 100))
    storages: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(input_ids=ids, labels=ids)
    measured = sum(storages.values())
    estimated = memory.activation_bytes(SMALL, 4, 100, "fp32")
    assert measured < estimated < 4 * measured, (measured, estimated)  # the safe side, within a small factor


def test_weights_not_yet_on_the_gpu_count_against_its_free_memory(monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(SMALL)
    # Worked by hand: embeddings 400*32 + lm_head 32*400 + 2 layers x (q 32*32 + k 32*16 + v 32*16 + o 32*32
    # + gate/up/down 3*32*64 + 2 norms of 32) + final norm 32 = 44,192 fp32 parameters; 8 rotary floats.
    weights = (44_192 + 8) * 4
    assert memory.bytes_still_to_place(model) == 3 * 44_192 * 4  # on the CPU it trains on: grads + AdamW
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the model is still on the CPU
    assert memory.bytes_still_to_place(model) == weights + 3 * 44_192 * 4
    monkeypatch.setattr(memory, "free_bytes", lambda: 12 * 2**20)
    # 6,220,800 bytes of activations fit in half of 12 MB (6,291,456), not in half of what the full model's
    # weights (176,800), gradients and AdamW moments (530,304) leave of it (11,875,808).
    assert not memory.choose_checkpointing("auto", SMALL, 4, 100, "fp32")["enabled"]
    decision = memory.choose_checkpointing("auto", SMALL, 4, 100, "fp32", model=model)
    assert decision["enabled"] is True
    assert decision["free_memory_mb"] == round((12 * 2**20 - 176_800 - 530_304) / 2**20, 1) == 11.3
    # LoRA freezes the base (in place): only the adapter gets gradients and optimizer state
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    adapter = 2 * (2 * 32 + 32 * 2)  # 2 layers x (A: 2x32, B: 32x2)
    assert memory.bytes_still_to_place(lora) == weights + adapter * 4 + 3 * adapter * 4


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
    assert decision["enabled"] is True and decision["free_memory_mb"] <= 1.0
    assert summary["validation_loss_after"] < summary["validation_loss_before"]  # the adapter still trains
    saved = yaml.safe_load((Path(summary["run_dir"]) / "config.yaml").read_text())
    assert (
        "gradient_checkpointing" not in saved["train"]
    )  # as the user wrote it (unset: auto), not the decision


def test_auto_leaves_it_off_with_room(make_config, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda: 64 * 2**30)
    raw = make_config(rows=16, train={"max_steps": 1}, eval={"samples": 0})
    assert api.train(config_from_dict(raw))["gradient_checkpointing"]["enabled"] is False
