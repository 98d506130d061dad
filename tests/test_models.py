import builtins

import pytest

from tunesmith.config import MethodConfig, ModelConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods import get_method
from tunesmith.models.loading import load_tokenizer, resolve_model


def test_unreachable_hub_id_is_a_clear_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(name="nobody-here/no-such-model")
    name = resolve_model(cfg, tmp_path)
    assert name == "nobody-here/no-such-model"
    with pytest.raises(
        TunesmithError, match=r"is not a local folder, and as a hub id HF_HUB_OFFLINE=1 is set"
    ):
        load_tokenizer(name, cfg)


def test_missing_local_path_and_non_model_folder(tmp_path):
    with pytest.raises(TunesmithError, match="does not exist"):
        resolve_model(ModelConfig(name=str(tmp_path / "missing")), tmp_path)
    with pytest.raises(TunesmithError, match="not a Hugging Face model folder"):
        resolve_model(ModelConfig(name=str(tmp_path)), tmp_path)


def test_qlora_without_bitsandbytes_names_the_reason(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("libbitsandbytes_cpu.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(
        TunesmithError,
        match=r"qlora needs bitsandbytes, which cannot be loaded here \(ImportError: libbitsandbytes_cpu",
    ):
        get_method("qlora").quantization_config(MethodConfig(name="qlora"))


def test_trust_remote_code_is_off_by_default():
    assert ModelConfig(name="x").trust_remote_code is False


def test_qlora_trains_a_4bit_base_on_cpu(tmp_path):
    """bitsandbytes runs 4-bit layers on this CPU (see RESOURCES.md), so QLoRA is tested for real."""
    pytest.importorskip("bitsandbytes")
    from conftest import build_model_folder, prompt_response_rows, write_jsonl
    from tunesmith import api
    from tunesmith.config import config_from_dict
    from tunesmith.run_folder import RunFolder
    from tunesmith.tasks.causal_lm.run import load_run

    model_dir = build_model_folder(tmp_path / "m", hidden=64)  # 4-bit blocks need wider layers than 32
    data = write_jsonl(tmp_path / "t.jsonl", prompt_response_rows(20))
    raw = {
        "model": {"name": str(model_dir)},
        "data": {"train_file": str(data), "validation_ratio": 0.2},
        "method": {"name": "qlora", "lora": {"r": 4}},
        "train": {
            "batch_size": 4,
            "max_steps": 3,
            "precision": "fp32",
            "eval_steps": 3,
            "learning_rate": 1e-2,
        },
        "eval": {"samples": 0},
        "output": {"dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")},
    }
    summary = api.train(config_from_dict(raw))
    assert summary["validation_loss_after"] < summary["validation_loss_before"]
    model = load_run(RunFolder.open(summary["run_dir"])).model
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())


def test_precision_choice_follows_the_hardware(monkeypatch):
    import torch

    from tunesmith.training import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.pick_precision("auto") == "fp32"
    hardware.cpu_flags.cache_clear()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(TunesmithError, match="bf16 on this CPU .* about 100x slower"):
        hardware.pick_precision("bf16")
    with pytest.raises(TunesmithError, match="fp16 needs a CUDA GPU"):
        hardware.pick_precision("fp16")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_bf16"})
    assert hardware.pick_precision("bf16") == "bf16"
