"""Other input shapes and templates, end to end on the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import yaml

from conftest import prompt_response_rows, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.data.templates import Renderer
from tunesmith.run_folder import RunFolder

QUICK = {"max_steps": 2, "eval_steps": 2}
NO_EVAL = {"samples": 0, "before_training": False}


def test_saved_datasets_folder_and_alpaca(tmp_path, make_config):
    rows = [
        {"instruction": f"say {w}", "input": "" if i % 2 else "loudly", "output": w}
        for i, w in enumerate(["cat", "sat", "mat", "dog", "ran", "park"])
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    raw = make_config(train=QUICK, eval=NO_EVAL)
    raw["data"].update({"train_file": str(tmp_path / "saved"), "validation_ratio": 0})
    summary = api.train(config_from_dict(raw))
    report = json.loads((Path(summary["run_dir"]) / "data_report.json").read_text())
    assert report["format"] == "alpaca" and report["train_examples"] == 6


def test_user_jinja_template_is_used_for_training_and_generation(tmp_path, make_config):
    template = tmp_path / "tmpl.jinja"
    template.write_text(
        "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n{% else %}A: {{ m['content'] }}{{ eos_token }}\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}A: {% endif %}"
    )
    raw = make_config(train=QUICK, eval={"samples": 1, "max_new_tokens": 3})
    raw["data"]["template"] = str(template)
    summary = api.train(config_from_dict(raw))
    run = RunFolder.open(summary["run_dir"])
    from tunesmith.tasks.causal_lm.run import load_run

    renderer = load_run(run).renderer
    assert renderer.prompt((("user", "hi"),)) == "Q: hi\nA: "
    assert len(api.generate(run.path, ["hi"], max_new_tokens=3)) == 1


def test_chat_messages_train_on_every_assistant_turn(tokenizer):
    renderer = Renderer(tokenizer, "chat")
    conversation = (
        ("system", "be brief"),
        ("user", "cat"),
        ("assistant", "mat"),
        ("user", "dog"),
        ("assistant", "park"),
    )
    pieces = renderer.segments(conversation)
    assert [trained for _, trained in pieces] == [False, True, False, True]
    assert "".join(text for text, _ in pieces) == renderer.render(conversation, add_generation_prompt=False)
    assert pieces[1][0] == "mat<|im_end|>\n" and pieces[3][0] == "park<|im_end|>\n"


def test_plain_text_and_packing_train(tmp_path, make_config):
    path = write_jsonl(
        tmp_path / "text.jsonl",
        [{"text": r["prompt"] + " " + r["response"]} for r in prompt_response_rows(24)],
    )
    raw = make_config(train=QUICK, eval=NO_EVAL)
    raw["data"].update({"train_file": str(path), "packing": True, "max_length": 64})
    summary = api.train(config_from_dict(raw))
    assert summary["status"] == "finished"
    report = json.loads((Path(summary["run_dir"]) / "data_report.json").read_text())
    assert (
        report["format"] == "text"
        and report["train_tokens"]["supervised_tokens"] == report["train_tokens"]["tokens"]
    )


def test_trackers_write_into_the_run_offline(make_config, tmp_path):
    # A fresh process, as from the CLI: wandb caches its settings process-wide at first use.
    raw = make_config(train={**QUICK, "report_to": ["tensorboard", "wandb", "mlflow"]}, eval=NO_EVAL)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "TENSORBOARD_"))}
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "train", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "runs" / "cfg" / "tracking"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run / "wandb").glob("offline-run-*"))  # W&B offline: no network needed
    assert list((run / "mlruns").glob("*/*/metrics/train_loss"))
