import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.causal_lm_run import load_run

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


def test_generate_uses_the_run(lora_run):
    summary, _ = lora_run
    answers = api.generate(summary["run_dir"], ["the cat sat", "dogs ran"], max_new_tokens=5)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


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
def test_other_methods_train_and_count_parameters(make_config, method, extra):
    raw = make_config(rows=16, train={"max_steps": 2}, eval={"samples": 0, "before_training": False})
    raw["method"] = {"name": method, **extra}
    summary = api.train(config_from_dict(raw))
    parameters = summary["parameters"]
    if method == "full":
        assert parameters["trainable"] == parameters["total"]
    else:
        assert 0 < parameters["trainable"] < parameters["total"]
    model = load_run(RunFolder.open(summary["run_dir"])).model
    assert probe_logits(model).shape[-1] > 0
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
