"""The guarantees the one pipeline (tasks/pipeline.py) gives every registered task, one row per task: a test split
held out and scored once, run-time decisions recorded (train.compile applied when asked, never ignored), the
same run.json fields, and an exact resume. A new task fails `test_every_registered_task_has_a_row` until it has
its row here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import (
    build_bert_folder,
    build_model_folder,
    build_whisper_classifier_folder,
    classification_config,
    synthesize_spoken_digits,
    tiny_config,
    topic_rows,
    write_jsonl,
)
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.registry import get_method, get_task, task_names

SMALL = {
    "max_steps": 4,
    "eval_steps": 2,
    "save_steps": 2,
    "precision": "fp32",
    "warmup": 0,
    "logging_steps": 1,
}


def causal_lm(folder: Path) -> dict:
    raw = tiny_config(folder, build_model_folder(folder / "lm"), rows=40)
    raw["data"] |= {"test_ratio": 0.2}
    raw["train"] |= SMALL
    return raw


def preference(folder: Path) -> dict:
    from test_preference_train import preference_config

    raw = preference_config(folder, build_model_folder(folder / "lm"), rows=30)
    raw["data"] |= {"test_ratio": 0.2}
    return raw


def seq2seq(folder: Path) -> dict:
    from test_seq2seq import build_tokenizer, raw_config, t5_model

    model = folder / "t5"
    tokenizer = build_tokenizer()
    t5_model(len(tokenizer)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    return raw_config(folder, model, rows=40, train={"max_steps": 4})


def text_classification(folder: Path) -> dict:
    rows = write_jsonl(folder / "topics.jsonl", topic_rows(60))
    model = build_bert_folder(folder / "bert")
    return classification_config(
        folder, model, "text-classification", rows, data={"test_ratio": 0.2}, train=SMALL
    )


def image_classification(folder: Path) -> dict:
    from test_media_classification import build_vit_folder, write_digits

    digits = write_digits(folder / "digits", count=60)
    model = build_vit_folder(folder / "vit")
    return classification_config(
        folder, model, "image-classification", digits, data={"test_ratio": 0.2}, train=SMALL
    )


def audio_classification(folder: Path) -> dict:
    clips = synthesize_spoken_digits(
        folder / "spoken", voices=["en-gb", "en-us"], variants=["m1", "f2"], speeds=[150], pitches=[50]
    )
    model = build_whisper_classifier_folder(folder / "whisper")
    return classification_config(
        folder,
        model,
        "audio-classification",
        clips,
        data={"test_ratio": 0.2},
        classification={"clip_seconds": 1.0},
        train=SMALL,
    )


def speech_recognition(folder: Path) -> dict:
    from test_speech_recognition import build_whisper_folder, speech_config, spoken_table

    raw = speech_config(folder, build_whisper_folder(folder / "whisper"), spoken_table(folder / "clips", 20))
    raw["data"] |= {"test_ratio": 0.2}
    return raw


def token_classification(folder: Path) -> dict:
    from test_token_classification import ner_config, tagged_rows, write_rows

    train = write_rows(folder / "train.jsonl", tagged_rows(60))
    raw = ner_config(folder, build_bert_folder(folder / "bert"), train)
    raw["data"] |= {"test_ratio": 0.2}
    raw["train"] |= SMALL
    return raw


ROWS = {
    "causal-lm": causal_lm,
    "preference": preference,
    "seq2seq": seq2seq,
    "text-classification": text_classification,
    "image-classification": image_classification,
    "audio-classification": audio_classification,
    "speech-recognition": speech_recognition,
    "token-classification": token_classification,
}
# Fields every finished run records, whatever its task.
EVERY_RUN = {
    "status", "task", "base_model", "base_model_path", "method", "is_adapter", "parameters", "precision",
    "precision_probe", "gradient_checkpointing", "compile", "processes", "hardware", "versions", "global_step",
    "train_seconds", "peak_memory_mb", "wall_seconds", "test",
}  # fmt: skip


def test_every_registered_task_has_a_row():
    assert set(ROWS) == set(task_names())


@pytest.mark.parametrize("task", sorted(ROWS))
def test_every_task_holds_a_test_split_out_scores_it_once_and_records_the_same_fields(tmp_path, task):
    raw = ROWS[task](tmp_path)
    summary = api.train(config_from_dict(raw))
    assert summary["status"] == "finished" and summary["task"] == task
    assert set(summary) >= EVERY_RUN, EVERY_RUN - set(summary)
    assert summary["compile"]["enabled"] is False and summary["compile"]["reason"]
    assert summary["precision_probe"]["reason"] and summary["gradient_checkpointing"]["reason"]
    run = Path(summary["run_dir"])
    report = json.loads((run / "data_report.json").read_text())
    held_out = report.get("test_examples") or report.get("test_pairs")
    assert held_out and summary["test"], "a test split is held out and scored"
    # scored once, at the end: no evaluation the Trainer logged (and chose a checkpoint on) saw the test split
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged and not any(key.startswith("test") for record in logged for key in record)


@pytest.mark.parametrize("task", sorted(ROWS))
def test_compile_true_is_applied_to_every_tasks_blocks(tmp_path, task):
    """train.compile: true compiles the model's blocks for every task (it used to be read by causal LM alone)."""
    from tunesmith.models.anatomy import transformer_blocks
    from tunesmith.models.loading import default_cache_dir, resolve_model
    from tunesmith.tasks.pipeline import run_time_decisions

    raw = ROWS[task](tmp_path)
    raw["train"]["compile"] = True
    cfg = config_from_dict(raw)
    the_task = get_task(task)
    cache = default_cache_dir(cfg.output.cache_dir)
    path = resolve_model(cfg.model, cache)
    data = the_task.prepare(cfg, the_task.validated_data(cfg), path, cache)
    model = the_task.build_model(cfg, path, get_method(cfg.method.name), data)
    decided = run_time_decisions(cfg, model, get_method(cfg.method.name), data, cache)
    assert decided["compile"] == {"enabled": True, "reason": "train.compile: true in the config"}
    assert all(block._compiled_call_impl is not None for block in transformer_blocks(model))


def _losses(run_dir: str) -> dict[int, list[float]]:
    """Step -> every training loss metrics.jsonl logged at it (a step logged twice shows as two)."""
    logged: dict[int, list[float]] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            logged.setdefault(record["step"], []).append(record["loss"])
    return logged


def _weights(run_dir: str) -> dict[str, object]:
    """Every tensor of the saved model (full weights, a head, or an adapter), keyed by file and name."""
    from safetensors.torch import load_file

    model = Path(run_dir) / "model"
    return {
        f"{path.name}:{name}": tensor
        for path in sorted(model.glob("*.safetensors"))
        for name, tensor in load_file(path).items()
    }


@pytest.mark.parametrize("task", sorted(ROWS))
def test_every_task_resumes_exactly_where_it_stopped(tmp_path, task, monkeypatch):
    """Stopped after its checkpoint at step 1 and resumed, a run logs the loss of every step once, the same as an
    uninterrupted run's, and ends with the same weights: step 2 sees the batch, the optimizer moments and the
    learning rate it would have seen (every row takes gradient steps: none fits by a solver)."""
    import torch

    from test_train import StopAt

    # report.html's plots take about half of each of these tiny runs, and the page is not what is checked here
    monkeypatch.setattr(
        "tunesmith.report.run_report.write_run_report", lambda run, task: run.path / "report.html"
    )
    raw = ROWS[task](tmp_path)
    raw["train"] |= {"max_steps": 2, "save_steps": 1, "eval_steps": 1, "logging_steps": 1, "warmup": 0}
    # kept short: no test split to score, no samples, none of the seq2seq and speech scores generated at evaluations
    raw["data"]["test_ratio"] = 0.0
    raw["eval"] = raw.get("eval", {}) | {"samples": 0, "before_training": False, "train_generations": 0}
    whole = api.train(config_from_dict(raw, overrides=["output.name=whole"]))
    stopped = api.train(config_from_dict(raw, overrides=["output.name=split"]), callbacks=[StopAt(1)])
    assert stopped["status"] == "stopped" and stopped["global_step"] == 1
    resumed = api.train(config_from_dict(raw, overrides=["output.name=split"]), resume=True)
    assert resumed["run_dir"] == stopped["run_dir"] and resumed["status"] == "finished"
    assert resumed["global_step"] == whole["global_step"] == 2

    split, uninterrupted = _losses(resumed["run_dir"]), _losses(whole["run_dir"])
    assert sorted(split) == sorted(uninterrupted) == [1, 2]  # no step skipped
    assert all(len(losses) == 1 for losses in split.values()), split  # none repeated
    for step, losses in uninterrupted.items():
        assert split[step] == pytest.approx(losses, abs=1e-5), step
    first, second = _weights(whole["run_dir"]), _weights(resumed["run_dir"])
    assert first and first.keys() == second.keys()
    different = [name for name in first if not torch.allclose(first[name], second[name], atol=1e-5)]
    assert different == [], "the resumed run did not continue the weights"
