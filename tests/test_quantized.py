"""An 8-bit base (model.quantization: int8, bitsandbytes LLM.int8) under LoRA: loads, trains, merges with parity,
serves, and the combinations it cannot take are refused in one line naming the key."""

import builtins

import pytest
import torch

from conftest import build_model_folder, prompt_response_rows, tiny_config, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError

bitsandbytes = pytest.importorskip("bitsandbytes")


def _int8_raw(folder, model):
    data = write_jsonl(folder / "t.jsonl", prompt_response_rows(24))
    raw = tiny_config(
        folder,
        model,
        24,
        data={"train_file": str(data), "validation_ratio": 0.25},
        method={"name": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        train={"max_steps": 4, "eval_steps": 4, "save_steps": 4},
        eval={"samples": 0},
    )
    raw["model"]["quantization"] = "int8"
    return raw


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    return build_model_folder(tmp_path_factory.mktemp("wide") / "m", hidden=64)


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, wide_model):
    folder = tmp_path_factory.mktemp("int8")
    return api.train(config_from_dict(_int8_raw(folder, wide_model)))


def _linear_layers(model) -> dict:
    return {type(p).__name__ for p in model.parameters()}


def test_an_int8_run_trains_on_8bit_weights_and_reloads_them(int8_run):
    from tunesmith.run_folder import RunFolder
    from tunesmith.tasks.causal_lm.run import load_run

    assert int8_run["validation_loss_after"] < int8_run["validation_loss_before"]
    model = load_run(RunFolder.open(int8_run["run_dir"])).model
    int8 = [p for p in model.parameters() if type(p).__name__ == "Int8Params"]
    # every Linear of the 2 blocks (q, k, v, o, gate, up, down) is 8-bit; embeddings and the LM head are not
    assert len(int8) == 2 * 7 and all(p.dtype == torch.int8 for p in int8)
    assert model.get_output_embeddings().weight.dtype == torch.float32


def test_the_trade_off_is_said_when_an_int8_run_starts(tmp_path, wide_model, capsys):
    raw = _int8_raw(tmp_path, wide_model)
    raw["train"]["max_steps"] = 1
    api.train(config_from_dict(raw))
    out = capsys.readouterr().out
    # 2 blocks of attention (q, o: 64x64; k, v: 32x64, two key-value heads) and MLP (3 x 64x128): 73,728 weights
    assert "model.quantization: int8: 73,728 base weights stored in 8 bits (0.1 MB instead of 0.3 MB" in out
    assert "no faster than lora on a float32 base" in out


def test_merge_folds_the_adapter_into_the_dequantized_base_with_parity(int8_run, tmp_path):
    """The merged float32 model must answer as the adapter over the 8-bit base as bitsandbytes trains it on a CPU
    (weights dequantized at each matmul, activations float32): the same weights summed in another order, so float32
    rounding alone separates them, ~1e-6 here; the tolerance is 1e-4. A merge that rounds W + BA back to int8
    (peft's own 8-bit merge) misses by far more, and LLM.int8 inference (activations rounded to int8 too) is only
    recorded beside it: that gap is bitsandbytes' rounding, present before any merge."""
    from peft.utils.integrations import dequantize_bnb_weight
    from transformers import AutoModelForCausalLM

    from tunesmith.run_folder import RunFolder
    from tunesmith.tasks.causal_lm.run import load_run

    record = api.merge(int8_run["run_dir"], tmp_path / "merged")
    assert record["tolerance"] == 1e-4 and record["max_abs_logit_difference"] < 1e-4
    assert record["int8_inference"]["max_abs_logit_difference"] > 0  # LLM.int8's path was the one compared
    assert 0 <= record["int8_inference"]["top1_agreement"] <= 1

    merged = AutoModelForCausalLM.from_pretrained(
        tmp_path / "merged"
    )  # a plain float32 folder, no bitsandbytes
    assert _linear_layers(merged) == {"Parameter"} and not getattr(merged.config, "quantization_config", None)

    tuned = load_run(RunFolder.open(int8_run["run_dir"]))
    probe = torch.tensor([tuned.renderer.encode_prompt((("user", "the cat sat on a mat"),))])
    # Independently of tunesmith's merge: one layer's merged weight is its dequantized int8 weight plus s * B A.
    q = tuned.model.base_model.model.model.layers[0].self_attn.q_proj
    expected = dequantize_bnb_weight(q.base_layer.weight, q.base_layer.state) + q.scaling["default"] * (
        q.lora_B["default"].weight @ q.lora_A["default"].weight
    )
    assert torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, expected, atol=1e-6)
    # And the whole model: the adapter over the 8-bit base in bitsandbytes' training path (dropout is 0).
    with torch.no_grad():
        as_trained = tuned.model.train()(input_ids=probe).logits
        merged_logits = merged.eval()(input_ids=probe).logits
    assert (as_trained - merged_logits).abs().max().item() < 1e-4

    requantized = tuned.model.merge_and_unload()  # peft's 8-bit merge: W + BA rounded to int8 again
    with torch.no_grad():
        rounded = requantized.train()(input_ids=probe).logits
    assert (rounded - merged_logits).abs().max().item() > 1e-4  # the tolerance tells the two merges apart


def test_an_int8_run_is_served_over_its_own_8bit_base(int8_run, wide_model, tmp_path):
    from tunesmith.serving.registry import Registry

    raw = _int8_raw(tmp_path, wide_model)
    raw["model"]["quantization"] = "none"
    raw["train"]["max_steps"] = 1
    float_run = api.train(config_from_dict(raw))
    registry = Registry([int8_run["run_dir"], float_run["run_dir"]])
    # the same base folder, but 8-bit for one run and float32 for the other: two copies, never one shared
    assert registry.count_base_copies() == 2
    int8_served, float_served = registry.models.values()
    assert "Int8Params" in _linear_layers(int8_served.model)
    assert "Int8Params" not in _linear_layers(float_served.model)


@pytest.mark.parametrize(
    ("method", "task_fields", "message"),
    [
        (
            {"name": "full"},
            {},
            "method full updates the base's own weights, and 8-bit weights take no gradient",
        ),
        ({"name": "qlora"}, {}, "method qlora loads its base 4-bit already"),
        ({"name": "last_n"}, {}, "method last_n updates the base's own weights"),
        ({"name": "dora"}, {}, "method dora has no 8-bit path"),
        ({"name": "lora"}, {"task": "text-classification"}, "int8 is not for task text-classification"),
    ],
)
def test_int8_with_a_method_or_task_that_cannot_take_it_is_one_line(tmp_path, method, task_fields, message):
    model = build_model_folder(tmp_path / "m")
    raw = {**_int8_raw(tmp_path, model), **task_fields}
    raw["method"] = method
    with pytest.raises(TunesmithError) as error:
        config_from_dict(raw)
    header, *problems = str(error.value).splitlines()
    assert (
        header == "config: 1 problem(s) in the config" and len(problems) == 1
    )  # the config's own error shape
    assert problems[0].strip().startswith("model.quantization: int8") and message in problems[0]
    assert "remove model.quantization" in problems[0] or "remove it" in problems[0]


def test_int8_without_bitsandbytes_names_the_key_and_the_fix(monkeypatch, tmp_path):
    from tunesmith.config import ModelConfig
    from tunesmith.models.loading import load_model

    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(TunesmithError) as error:
        load_model(str(tmp_path), ModelConfig(name=str(tmp_path), quantization="int8"))
    assert str(error.value) == (
        "model.quantization: int8 needs bitsandbytes, which cannot be loaded here (ImportError: No module named "
        "'bitsandbytes'); install it with `pip install tunesmith[quantization]`, or remove model.quantization"
    )
