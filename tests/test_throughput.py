"""run.json's throughput counts training only, and validation loss has one definition (per supervised token)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.training.callbacks import TokenCounter


class CountingCollator:
    real_tokens = 0


def test_work_inside_excluded_counts_neither_tokens_nor_time():
    collator = CountingCollator()
    counter = TokenCounter(collator)
    collator.real_tokens += 100  # a training batch
    with counter.excluded():  # an evaluation: 50 tokens and 0.3 s
        collator.real_tokens += 50
        time.sleep(0.3)
    assert counter.tokens == 100
    assert counter.seconds < 0.3  # the 0.3 s of evaluation are not training time


def test_train_tokens_are_the_training_examples_tokens_times_epochs(make_config):
    # Evaluating at every step would add the validation tokens many times over if evaluation batches counted.
    raw = make_config(rows=12, train={"max_steps": None, "epochs": 2, "eval_steps": 1, "save_steps": 2})
    summary = api.train(config_from_dict(raw))
    report = json.loads((Path(summary["run_dir"]) / "data_report.json").read_text())
    assert summary["train_tokens"] == 2 * report["train_tokens"]["tokens"]
    # train_seconds is kept to the millisecond, so the quotient agrees with the recorded rate to well under 1%
    expected = summary["train_tokens"] / summary["train_seconds"]
    assert abs(summary["tokens_per_second"] - expected) <= 0.01 * expected


def test_validation_loss_has_one_definition_per_token_everywhere(make_config):
    # Four evaluation batches of different lengths: a mean of per-batch means would differ from the per-token mean.
    raw = make_config(rows=40, eval={"batch_size": 2, "samples": 0})
    summary = api.train(config_from_dict(raw))
    result = api.evaluate(summary["run_dir"], generations=0)
    assert result["data"] == "validation split of the run"
    assert abs(summary["validation_loss_after"] - result["tuned"]["loss"]) < 1e-5
