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
