"""train.precision: auto (measured probe, cached per host), frozen weights in bf16, train.compile's decision."""

import json

import pytest
import torch
import yaml
from transformers import LlamaConfig

from test_sparse_lm_head import lora_trainer_and_batch, loss_and_grads
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.training import compile as compiling
from tunesmith.training import hardware, precision
from tunesmith.training.flops import block_matmul_weights, training_flops

TINY = LlamaConfig(
    hidden_size=8,
    intermediate_size=16,
    num_attention_heads=2,
    num_key_value_heads=2,
    num_hidden_layers=1,
    vocab_size=10,
)


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def fake_rates(monkeypatch, fp32: float, bf16: float) -> list:
    calls = []

    def measured(dtype, shapes, seconds):
        calls.append(dtype)
        return fp32 if dtype == torch.float32 else bf16

    monkeypatch.setattr(precision, "matmul_gflops", measured)
    return calls


def fake_flags(monkeypatch, flags: set[str]) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: bool(flags & {"avx512_bf16", "amx_bf16"}))


def test_auto_is_fp32_on_an_avx2_cpu_with_the_measured_rates_recorded(tmp_path, monkeypatch, cpu_only):
    fake_flags(monkeypatch, {"avx2", "fma"})
    fake_rates(monkeypatch, fp32=110.0, bf16=1.1)
    decision = precision.decide_precision("auto", TINY, tmp_path)
    assert decision["precision"] == "fp32"
    assert decision["probe"]["fp32_gflops"] == 110.0 and decision["probe"]["bf16_gflops"] == 1.1
    assert "no AVX-512 BF16 or AMX" in decision["reason"] and "bf16 1.1 vs fp32 110.0" in decision["reason"]
    with pytest.raises(TunesmithError, match="about 100x slower"):
        precision.decide_precision("bf16", TINY, tmp_path)


def test_auto_is_bf16_only_where_the_cpu_has_bf16_units_and_the_probe_confirms_it(
    tmp_path, monkeypatch, cpu_only
):
    fake_flags(monkeypatch, {"avx512f", "avx512_bf16"})
    fake_rates(monkeypatch, fp32=214.0, bf16=973.0)
    assert precision.decide_precision("auto", TINY, tmp_path / "a")["precision"] == "bf16"
    fake_rates(monkeypatch, fp32=214.0, bf16=230.0)  # flags present, but not faster by the margin
    slow = precision.decide_precision("auto", TINY, tmp_path / "b")
    assert slow["precision"] == "fp32" and "not 1.3x faster" in slow["reason"]
    assert precision.decide_precision("fp32", TINY, tmp_path / "b")["precision"] == "fp32"


def test_the_probe_is_cached_per_host_and_shape(tmp_path, monkeypatch, cpu_only):
    fake_flags(monkeypatch, {"avx2"})
    calls = fake_rates(monkeypatch, fp32=100.0, bf16=1.0)
    first = precision.probe_cpu(TINY, tmp_path)
    second = precision.probe_cpu(TINY, tmp_path)
    assert len(calls) == 2 and first["cached"] is False and second["cached"] is True
    assert second["fp32_gflops"] == 100.0
    wider = LlamaConfig(**{**TINY.to_dict(), "intermediate_size": 32})
    precision.probe_cpu(wider, tmp_path)  # other shapes: measured again
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    precision.probe_cpu(TINY, tmp_path)  # another torch: measured again
    assert len(calls) == 6 and len(list((tmp_path / "precision-probe").iterdir())) == 3


def test_the_real_probe_measures_both_precisions_at_the_model_shapes(tmp_path, cpu_only):
    probe = precision.probe_cpu(TINY, tmp_path)
    assert probe["fp32_gflops"] > 0 and probe["bf16_gflops"] > 0
    assert probe["shapes"] == [[64, 8, 8], [64, 8, 16], [64, 16, 8]]


def test_frozen_weights_in_bf16_keep_the_loss_within_the_bf16_tolerance(tmp_path, tiny_model, tokenizer):
    trainer, model, batch, num_items = lora_trainer_and_batch(tmp_path, tiny_model, tokenizer)
    plain_loss, plain_grads = loss_and_grads(trainer, model, batch, sparse=False, num_items=num_items)
    with precision.frozen_weights_in_bf16(model) as frozen, torch.autocast("cpu", dtype=torch.bfloat16):
        assert frozen["layers"] == 2 * 7 + 1  # 2 blocks x 7 projections, and the (untied) LM head
        base = [m.base_layer.weight for m in model.modules() if hasattr(m, "base_layer")]
        assert base and all(w.dtype == torch.bfloat16 for w in base)
        assert model.get_input_embeddings().weight.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        fast_loss, fast_grads = loss_and_grads(trainer, model, batch, sparse=True, num_items=num_items)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 again afterwards
    assert abs(fast_loss.item() - plain_loss.item()) / plain_loss.item() < 1e-2
    for name, grad in plain_grads.items():
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), fast_grads[name].flatten(), dim=0)
        assert cosine > 0.99, (name, cosine.item())


def test_a_tied_lm_head_stays_fp32_with_its_embedding():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**{**TINY.to_dict(), "tie_word_embeddings": True})).requires_grad_(
        False
    )
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with precision.frozen_weights_in_bf16(model) as frozen:
        assert frozen["layers"] == 7 and model.lm_head.weight.dtype == torch.float32
        assert frozen["saved_mb"] == pytest.approx(640 * 2 / 2**20, abs=0.1)


def test_training_flops_count_each_product_once_by_hand():
    assert block_matmul_weights(TINY) == 8 * 4 * (2 * 2 + 2 * 2) + 3 * 8 * 16  # q,o: 2 heads; k,v: 2 kv heads
    # forward 2 x 640, input gradients as much again; attention 4 x context 4 x width 8, three times; head 4 x 8 x 10
    assert training_flops(TINY, 1, 4, 1) == 2 * 640 * 2 + 3 * 4 * 4 * 8 + 4 * 8 * 10
    assert training_flops(TINY, 1, 4, 0, frozen_base=False) == 2 * 640 * 3 + 3 * 128
    assert training_flops(TINY, 1, 4, 0, recomputed=True) == 2 * 640 * 3 + 4 * 128


def test_compile_auto_pays_only_when_the_saving_exceeds_the_compile_time(cpu_only):
    short = compiling.decide_compile("auto", planned_tokens=10_000, flops_per_token=0.5e9, gflops=100.0)
    assert short["enabled"] is False and short["estimated_train_seconds"] == 50.0
    long = compiling.decide_compile("auto", planned_tokens=1_000_000, flops_per_token=0.5e9, gflops=100.0)
    assert long["enabled"] is True and long["estimated_saving_seconds"] == pytest.approx(
        5000 * 0.2 / 1.2, 0.01
    )
    assert short["compile_seconds"] == pytest.approx(86 * 167 / 100, 0.01)  # compiling slows with the host
    # the verdict does not follow the host's load: a busy host measures a low rate, and compiles slower too
    for tokens, verdict in ((1_000_000, True), (100_000, False)):
        for gflops in (5.0, 200.0):
            assert compiling.decide_compile("auto", tokens, 0.5e9, gflops)["enabled"] is verdict
    assert compiling.decide_compile(True, 1, 1.0, None)["enabled"] is True
    assert compiling.decide_compile(False, 10**9, 1e9, 100.0)["enabled"] is False
    assert "no measurement" in compiling.decide_compile("auto", 10**9, 1e9, None)["reason"]
    assert compiling.planned_tokens(None, 2.0, 8, [10, 30]) == 80
    assert compiling.planned_tokens(3, 1.0, 8, [10, 30]) == 3 * 8 * 20


def test_compile_blocks_compiles_each_block_and_leaves_the_head_eager(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert compiling.compile_blocks(model) == 2
    assert all(block._compiled_call_impl is not None for block in model.model.layers)
    assert model.lm_head._compiled_call_impl is None


def test_a_run_records_its_precision_probe_and_compile_decision_and_keeps_the_config(make_config, tmp_path):
    raw = make_config(train={"precision": "auto", "max_steps": 2, "eval_steps": 2}, eval={"samples": 0})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    summary = api.train(config)
    decision = summary["precision_probe"]
    assert summary["precision"] == decision["precision"]
    if not torch.cuda.is_available() and not hardware.cpu_has_fast_bf16():
        assert decision["precision"] == "fp32" and decision["probe"]["fp32_gflops"] > 0
    assert summary["compile"]["enabled"] is False and summary["compile"]["reason"].startswith("auto: off")
    saved = yaml.safe_load(
        (tmp_path / "runs" / summary["run_dir"].split("/")[-1] / "config.yaml").read_text()
    )
    assert saved["train"]["precision"] == "auto" and "compile" not in saved["train"]
    run_json = json.loads((tmp_path / "runs" / summary["run_dir"].split("/")[-1] / "run.json").read_text())
    assert run_json["precision_probe"]["reason"] == decision["reason"]


def test_a_bf16_run_stores_frozen_weights_in_bf16_and_matches_fp32(
    make_config, tmp_path, monkeypatch, cpu_only
):
    """A whole run (training, evaluation every 3 steps, final scoring) with bf16 chosen by auto, against fp32."""
    fake_flags(monkeypatch, {"avx512_bf16"})
    fake_rates(monkeypatch, fp32=100.0, bf16=400.0)
    results = {}
    for name in ("fp32", "auto"):
        raw = make_config(train={"precision": name, "learning_rate": 1e-3}, eval={"samples": 0})
        raw["output"]["name"] = name
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw))
        results[name] = api.train(config)
    fast, plain = results["auto"], results["fp32"]
    assert fast["precision"] == "bf16" and plain["precision"] == "fp32"
    assert fast["frozen_weights_bf16"]["layers"] == 2 * 7 + 1 and plain.get("frozen_weights_bf16") is None
    relative = (
        abs(fast["validation_loss_after"] - plain["validation_loss_after"]) / plain["validation_loss_after"]
    )
    assert relative < 1e-2, (fast["validation_loss_after"], plain["validation_loss_after"])
