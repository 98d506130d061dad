"""Benchmarks through lm-evaluation-harness: multiple-choice files scored as lm-eval's own CLI scores them, bad rows
named by line, and the built-in capitals probe deterministic and well-formed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.evaluation import benchmarks, capitals
from tunesmith.evaluation.multiple_choice import read_questions

METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


def multiple_choice_rows(count: int = 16) -> list[dict]:
    """Questions from the tiny model's training prompts: the right answer is the trained response."""
    from conftest import prompt_response_rows

    rows = prompt_response_rows(40)
    questions = []
    for index, row in enumerate(rows[:count]):
        wrong = [rows[(index + k) % len(rows)]["response"] for k in (7, 13, 21)]
        choices = list(dict.fromkeys([row["response"], *wrong]))
        # half the answers as an index, half as the choice's text: both forms are accepted
        answer = 0 if index % 2 else row["response"]
        questions.append({"question": row["prompt"], "choices": choices, "answer": answer})
    return questions


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_model):
    """A LoRA run trained with eval.benchmarks: a multiple-choice file, scored before and after training."""
    from conftest import tiny_config, write_jsonl

    folder = tmp_path_factory.mktemp("bench")
    questions = write_jsonl(folder / "my_mc.jsonl", multiple_choice_rows())
    raw = tiny_config(folder, tiny_model, train={"max_steps": 8, "learning_rate": 3e-2})
    raw["eval"] |= {"benchmarks": [str(questions)], "samples": 0}
    summary = api.train(config_from_dict(raw))
    return Path(summary["run_dir"]), questions


def lm_eval_cli(models: dict[str, str], tasks: Path, name: str, output: Path) -> dict[str, dict]:
    """lm-eval's own command line on model folders (run side by side): the numbers tunesmith must reproduce."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    running = {}
    for label, model_args in models.items():
        command = [
            *(sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args),
            *("--tasks", name, "--include_path", str(tasks), "--batch_size", "8", "--device", "cpu"),
            *("--output_path", str(output / label)),
        ]
        running[label] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    scores = {}
    for label, process in running.items():
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors.decode()[-2000:]
        (result,) = (output / label).rglob("results_*.json")
        scores[label] = benchmarks.task_scores(json.loads(result.read_text()), name)
    return scores


def test_bench_scores_equal_lm_evals_own_cli_for_base_and_tuned(bench_run, tiny_model, tmp_path, capsys):
    from tunesmith.cli import main
    from tunesmith.export.hub import model_card
    from tunesmith.run_folder import RunFolder

    run, questions = bench_run
    assert main(["eval", str(run), "--bench", str(questions)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((run / "eval" / "bench" / "evaluation.json").read_text())
    scores = record["tasks"]["my_mc"]
    tasks = run / "eval" / "bench" / "tasks"
    models = {"base": f"pretrained={tiny_model}", "tuned": f"pretrained={tiny_model},peft={run / 'model'}"}
    cli = lm_eval_cli(models, tasks, "my_mc", tmp_path)
    base, tuned = cli["base"], cli["tuned"]
    for metric in METRICS:
        assert scores["base"][metric] == pytest.approx(base[metric], abs=1e-6), metric
        assert scores["tuned"][metric] == pytest.approx(tuned[metric], abs=1e-6), metric
    assert scores["examples"] == 16
    assert scores["difference"]["acc"] == pytest.approx(tuned["acc"] - base["acc"], abs=1e-6)
    # the adapter answers: tuned differs from base (the questions are the training prompts)
    assert (tuned["acc"], tuned["acc_norm"]) != (base["acc"], base["acc_norm"])
    assert f"{base['acc']:.4f} ± {base['acc_stderr']:.4f}" in printed
    assert f"{tuned['acc']:.4f} ± {tuned['acc_stderr']:.4f}" in printed
    # training's own check (eval.benchmarks): the base before the first step, the tuned model after the last
    during = json.loads((run / "run.json").read_text())["benchmarks"]["tasks"]["my_mc"]
    for metric in METRICS:
        assert during["base"][metric] == pytest.approx(base[metric], abs=1e-6), metric
        assert during["tuned"][metric] == pytest.approx(tuned[metric], abs=1e-6), metric
    page = (run / "report.html").read_text()
    assert 'id="benchmarks"' in page and f"{tuned['acc']:.4f}" in page
    card = model_card(RunFolder.open(run), "me/tuned")
    line = f"accuracy {tuned['acc']:.4f} ± {tuned['acc_stderr']:.4f} (base model: {base['acc']:.4f}"
    assert card.count(line) == 2  # training's check and `tunesmith eval --bench`


def test_a_bad_multiple_choice_row_is_named_by_line_and_field(tmp_path, make_config):
    good = {"question": "2 + 2?", "choices": ["3", "4"], "answer": "4"}
    lines = [
        json.dumps(good),
        json.dumps(good | {"answer": "5"}),
        json.dumps(good | {"choices": ["4"], "answer": 0}),
        "{not json",
        "",
        json.dumps({"choices": ["a", "b"], "answer": 2}),
        json.dumps(good | {"answer": True}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TunesmithError) as caught:
        read_questions(path)
    text = str(caught.value)
    assert "5 bad multiple-choice row(s)" in text
    assert f"{path}:2: answer: '5' is not one of the choices" in text
    assert f"{path}:3: choices: 1 given; 2 or more are needed" in text
    assert f"{path}:4: not a JSON object" in text
    assert f"{path}:6: question: missing or empty" in text
    assert f"{path}:6: answer: index 2 is out of range for 2 choices" in text
    assert f"{path}:7: answer: True is neither an index nor a choice's text" in text
    assert f"{path}:1:" not in text
    raw = make_config(eval={"benchmarks": [str(path)]})
    with pytest.raises(TunesmithError, match=r"bad\.jsonl:2: answer"):
        api.train(config_from_dict(raw))
    assert not Path(raw["output"]["dir"]).exists()  # refused before a run folder or a model


def test_the_capitals_probe_is_deterministic_and_well_formed(tmp_path):
    questions = capitals.capital_questions()
    assert questions == capitals.capital_questions()
    assert questions != capitals.capital_questions(seed=1)  # the seed picks the distractors
    known = capitals.country_capitals()
    assert len(questions) == len(known) >= 240
    answers = [0] * capitals.CHOICES
    for question in questions:
        assert len(question.choices) == capitals.CHOICES == len(set(question.choices))
        country = question.question.removeprefix("What is the capital of ").removesuffix("?")
        assert question.choices[question.answer] == known[country]
        answers[question.answer] += 1
    assert min(answers) > len(questions) / capitals.CHOICES / 2  # the right answer's position is spread
    france = next(q for q in questions if q.question == "What is the capital of France?")
    assert france.choices[france.answer] == "Paris"
    (prepared,) = benchmarks.prepare_benchmarks([capitals.NAME], tmp_path)
    assert prepared.name == "capitals" and "countryinfo 1.0.1" in prepared.source
    assert read_questions(tmp_path / "capitals.jsonl") == questions  # the file lm-eval reads, row for row


def test_benchmarks_are_refused_for_a_model_that_is_not_a_language_model():
    from tunesmith.registry import get_task

    with pytest.raises(TunesmithError, match="not a language model"):
        benchmarks.check_trainable(["capitals"], get_task("text-classification"))
    with pytest.raises(TunesmithError, match="give a multiple-choice .jsonl file"):
        benchmarks.check_benchmarks(["hellaswag"])
