import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.causal_lm.run import load_run

PROBE = [[5, 17, 33, 2, 90, 41, 8]]


class CaptureLogits(TrainerCallback):
    """Logits of the in-memory model at the end of training (after the best checkpoint is loaded)."""

    def __init__(self):
        self.logits = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=torch.tensor(PROBE, device=model.device)).logits.cpu()


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def probe_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(PROBE)).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model):
    from conftest import tiny_config

    raw = tiny_config(tmp_path_factory.mktemp("lora-run"), tiny_model)
    capture = CaptureLogits()
    summary = api.train(config_from_dict(raw), callbacks=[capture])
    return summary, capture


def test_run_folder_explains_itself(lora_run):
    summary, _ = lora_run
    run = Path(summary["run_dir"])
    for name in (
        "config.yaml",
        "data_report.json",
        "metrics.jsonl",
        "run.json",
        "samples.jsonl",
        "model/adapter_config.json",
    ):
        assert (run / name).exists(), name
    assert summary["status"] == "finished" and summary["global_step"] == 6
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"]
    report = json.loads((run / "data_report.json").read_text())
    assert report["train_examples"] == 32 and report["validation_examples"] == 8
    assert report["eos_in_labels"] == {"count": 32, "of": 32}
    metrics = RunFolder(run).read_metrics()
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert metrics[0]["step"] == 0 and "eval_loss" in metrics[0]  # validation loss before training
    assert summary["validation_loss_before"] == pytest.approx(metrics[0]["eval_loss"])
    assert summary["validation_loss_after"] < summary["validation_loss_before"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"reference", "base", "tuned"} <= set(samples[0])


def test_adapter_reloads_to_identical_logits(lora_run):
    summary, capture = lora_run
    model = load_run(RunFolder.open(summary["run_dir"])).model
    if torch.cuda.is_available():  # trained on the GPU, reloaded on the CPU: other kernels, same weights
        assert torch.allclose(probe_logits(model), capture.logits, atol=1e-5)
    else:
        assert torch.equal(probe_logits(model), capture.logits)


def test_merge_matches_adapter(lora_run):
    summary, capture = lora_run
    result = api.merge(summary["run_dir"])
    assert result["max_abs_logit_difference"] < 1e-4
    merged = AutoModelForCausalLM.from_pretrained(result["output"])
    assert (probe_logits(merged) - capture.logits).abs().max().item() < 1e-4
    with pytest.raises(Exception, match="already exists"):
        api.merge(summary["run_dir"])


def greedy(model, renderer, prompt: str, steps: int) -> str:
    """Greedy decoding by hand, one prompt at a time: argmax of the tuned model's next-token logits."""
    ids = renderer.encode_prompt((("user", prompt),))
    answer = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=torch.tensor([ids + answer])).logits[0, -1].argmax())
            if token in renderer.stop_token_ids():
                break
            answer.append(token)
    return renderer.tokenizer.decode(answer, skip_special_tokens=True).strip()


def test_generate_uses_the_run(lora_run, tiny_model):
    summary, _ = lora_run
    prompts = ["the cat sat", "dogs ran to the park"]
    answers = api.generate(summary["run_dir"], prompts, max_new_tokens=5)
    tuned = load_run(RunFolder.open(summary["run_dir"]))
    assert answers == [greedy(tuned.model, tuned.renderer, prompt, 5) for prompt in prompts]
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert answers != [
        greedy(base, tuned.renderer, prompt, 5) for prompt in prompts
    ]  # the adapter, not the base


def test_resume_continues_step_count_and_loss_curve(make_config):
    raw = make_config(rows=40, train={"max_steps": 8, "eval_steps": 2, "save_steps": 4})
    raw["data"]["validation_ratio"] = 0.2
    uninterrupted = api.train(config_from_dict(raw, overrides=["output.name=whole"]))
    stopped = api.train(config_from_dict(raw, overrides=["output.name=split"]), callbacks=[StopAt(4)])
    assert stopped["status"] == "stopped" and stopped["global_step"] == 4
    resumed = api.train(config_from_dict(raw, overrides=["output.name=split"]), resume=True)
    assert resumed["run_dir"] == stopped["run_dir"] and resumed["global_step"] == 8
    whole = {
        m["step"]: m["loss"] for m in RunFolder(Path(uninterrupted["run_dir"])).read_metrics() if "loss" in m
    }
    split = {m["step"]: m["loss"] for m in RunFolder(Path(resumed["run_dir"])).read_metrics() if "loss" in m}
    assert sorted(split) == list(range(1, 9))
    for step in range(1, 9):
        assert split[step] == pytest.approx(whole[step], abs=1e-5), step
    # the checkpoint's saved state names the final folder, not the staging one, so a resumed run finds its best
    state = json.loads(
        (Path(stopped["run_dir"]) / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text()
    )
    assert state["best_model_checkpoint"].endswith("/checkpoints/checkpoint-4")
    assert Path(resumed["best_checkpoint"]).exists() and ".partial" not in resumed["best_checkpoint"]


def test_a_new_run_never_reuses_a_folder(make_config):
    raw = make_config(rows=12, train={"max_steps": 1}, eval={"samples": 0, "before_training": False})
    first = api.train(config_from_dict(raw, overrides=["output.name=same"]))
    second = api.train(config_from_dict(raw, overrides=["output.name=same"]))
    assert Path(first["run_dir"]).name == "same" and Path(second["run_dir"]).name == "same-2"


@pytest.mark.parametrize(
    ("method", "extra"),
    [("full", {}), ("freeze", {"freeze": {"last_n": 1}}), ("dora", {})],
)
def test_other_methods_train_and_count_parameters(make_config, tiny_model, method, extra):
    raw = make_config(rows=16, train={"max_steps": 2}, eval={"samples": 0, "before_training": False})
    raw["method"] = {"name": method, **extra}
    capture = CaptureLogits()
    summary = api.train(config_from_dict(raw), callbacks=[capture])
    parameters = summary["parameters"]
    if method == "full":
        assert parameters["trainable"] == parameters["total"]
    else:
        assert 0 < parameters["trainable"] < parameters["total"]
    model = load_run(RunFolder.open(summary["run_dir"])).model
    # the saved run reloads to the model that training ended with, and that model moved off the base
    assert torch.allclose(probe_logits(model), capture.logits, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert (probe_logits(base) - capture.logits).abs().max().item() > 1e-3
    if method == "dora":
        assert (
            json.loads((Path(summary["run_dir"]) / "model" / "adapter_config.json").read_text())["use_dora"]
            is True
        )


def test_early_stopping_stops_at_patience_and_keeps_the_best(make_config):
    # greater_is_better on a loss makes every improvement count as a worsening: best is the first evaluation
    raw = make_config(
        rows=40,
        train={"max_steps": 20, "eval_steps": 2, "early_stopping_patience": 2, "greater_is_better": True},
        eval={"samples": 0},
    )
    summary = api.train(config_from_dict(raw))
    assert summary["status"] == "finished"  # an early stop is a finished run, not an interrupted one
    assert summary["global_step"] == 6
    assert summary["best_checkpoint"].endswith("checkpoint-2")
    assert summary["validation_loss_after"] == pytest.approx(summary["best_metric"])


def test_gradient_checkpointing_trains_lora(make_config):
    raw = make_config(rows=16, train={"max_steps": 2, "gradient_checkpointing": True}, eval={"samples": 0})
    summary = api.train(config_from_dict(raw))
    assert (
        summary["status"] == "finished"
        and summary["validation_loss_after"] < summary["validation_loss_before"]
    )


def test_precision_and_weight_dtype_are_checked_together(monkeypatch):
    from tunesmith.errors import TunesmithError
    from tunesmith.training import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(
        TunesmithError, match=r"^model.dtype: the weights are float16, which cannot be trained on a CPU"
    ):
        hardware.pick_precision("auto", torch.float16)
    with pytest.raises(
        TunesmithError, match=r"^model.dtype: bfloat16 weights on this CPU .* set model.dtype: float32"
    ):
        hardware.pick_precision("auto", torch.bfloat16)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_bf16"})
    assert hardware.pick_precision("auto", torch.bfloat16) == "bf16"  # auto follows 16-bit weights
    assert hardware.pick_precision("auto", torch.float32) == "fp32"
    with pytest.raises(
        TunesmithError,
        match=r"^model.dtype: bfloat16 weights cannot train in fp32 .* set train.precision: bf16",
    ):
        hardware.pick_precision("fp32", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(TunesmithError, match=r"^model.dtype: this GPU has no bfloat16 support"):
        hardware.pick_precision("auto", torch.bfloat16)
    assert hardware.pick_precision("auto", torch.float16) == "fp16"
    with pytest.raises(TunesmithError, match=r"^model.dtype: float16 weights cannot train in bf16"):
        hardware.pick_precision("bf16", torch.float16)


def test_float16_weights_are_refused_on_a_cpu_before_training(make_config):
    from tunesmith.errors import TunesmithError

    if torch.cuda.is_available():
        pytest.skip("checks the CPU rule; on a GPU float16 weights are allowed")
    raw = make_config(rows=12, train={"max_steps": 1}, eval={"samples": 0, "before_training": False})
    raw["model"]["dtype"] = "float16"
    with pytest.raises(TunesmithError, match="model.dtype: the weights are float16") as caught:
        api.train(config_from_dict(raw))
    assert "\n" not in str(caught.value)  # one line
    runs = Path(raw["output"]["dir"])
    assert not any(runs.glob("*/checkpoints/checkpoint-*"))  # refused before any step
