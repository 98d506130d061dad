"""`tunesmith sweep`: Optuna search over the tiny model; pruning, workers sharing a study, resuming a killed sweep."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from tunesmith import api
from tunesmith.commands.sweep import config_value, distribution, objective_value, plan_sweep
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.report.sweep_report import write_sweep_report

SPACE = {
    "train.learning_rate": {"low": 1e-5, "high": 1e-1, "log": True},
    "method.lora.r": {"choices": [2, 8]},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The trials' tiny matrices are faster on one thread, and two workers must not fight over two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_config(folder: Path, model: Path, space=None, sweep=None, **train) -> Path:
    from conftest import tiny_config

    raw = tiny_config(
        folder, model, 40, eval={"samples": 0}, train={"max_steps": 8, "eval_steps": 2, **train}
    )
    raw["sweep"] = {"space": SPACE if space is None else space, "trials": 6, **(sweep or {})}
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def sweep_command(config: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "tunesmith.cli", "sweep", str(config), "--trials", str(trials)]


def worker_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def load_study(folder: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="search", storage=f"sqlite:///{folder / 'runs/search-sweep/study.db'}"
    )


def test_sweep_prunes_and_its_best_config_reproduces_the_best_trial(tmp_path, tiny_model):
    result = api.sweep(write_config(tmp_path, tiny_model))

    folder = tmp_path / "runs" / "search-sweep"
    assert result["folder"] == str(folder) and result["metric"] == "eval_loss"
    assert result["states"].get("PRUNED", 0) >= 1
    assert result["states"].get("COMPLETE", 0) + result["states"]["PRUNED"] == 6
    records = json.loads((folder / "trials.json").read_text())
    assert [r["number"] for r in records] == list(range(6))
    complete = [r for r in records if r["state"] == "COMPLETE"]
    best = min(complete, key=lambda r: r["value"])
    assert result["best"] == {"number": best["number"], "value": best["value"], "params": best["params"]}
    for record in records:  # every trial is an ordinary run folder; a pruned one says so
        summary = json.loads(Path(record["run_dir"], "run.json").read_text())
        assert summary["status"] == {"COMPLETE": "finished", "PRUNED": "pruned"}[record["state"]]
        assert Path(record["run_dir"]).name == f"trial-{record['number']:03d}"
        # Finished trials give their checkpoints back to the disk (sweep.keep_checkpoints: false); models stay.
        assert not Path(record["run_dir"], "checkpoints").exists()
        assert Path(record["run_dir"], "model").exists() == (record["state"] == "COMPLETE")
    pruned = next(r for r in records if r["state"] == "PRUNED")
    assert pruned["pruned_at_step"] < 8

    page = (folder / "sweep_report.html").read_text()
    for image in ("optimization-history", "param-importances"):
        assert f'<img id="{image}" src="data:image/png;base64,' in page
    assert page.count(' alt="') == 2
    assert page.count("<tr") == 7  # header and six trials

    best_config = load_config(result["best_config"])
    assert best_config.sweep is None
    assert best_config.output.name == "search-best" and best_config.output.dir == str(tmp_path / "runs")
    assert best_config.train.learning_rate == best["params"]["train.learning_rate"]
    assert best_config.method.section("lora").r == best["params"]["method.lora.r"]
    retrained = api.train(result["best_config"])
    assert retrained["run_dir"] == str(tmp_path / "runs" / "search-best")
    assert retrained["validation_loss_after"] == pytest.approx(best["value"], rel=1e-5)


def test_two_workers_share_one_study(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, sweep={"pruner": "none"}, max_steps=4)
    logs = [(tmp_path / f"worker-{n}.log").open("w") for n in range(2)]
    workers = [
        subprocess.Popen(sweep_command(config, 6), stdout=log, stderr=subprocess.STDOUT, env=worker_env())
        for log in logs
    ]
    codes = [worker.wait(timeout=240) for worker in workers]
    for log in logs:
        log.close()
    assert codes == [0, 0], "\n".join((tmp_path / f"worker-{n}.log").read_text()[-3000:] for n in range(2))

    trials = load_study(tmp_path).get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert len(trials) >= 6  # two workers may both start the last trial
    assert {t.user_attrs["pid"] for t in trials} == {worker.pid for worker in workers}
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(trials)
    assert all(Path(d).name == f"trial-{t.number:03d}" for d, t in zip(run_dirs, trials, strict=True))
    points = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(points)) == len(points)


def test_a_killed_sweep_resumes_and_retries_the_interrupted_point(tmp_path, tiny_model, capsys):
    # Longer trials, no pruning: the third trial is surely mid-run when the process is killed.
    config = write_config(tmp_path, tiny_model, sweep={"pruner": "none"}, max_steps=40, eval_steps=10)
    log = (tmp_path / "killed.log").open("w")
    worker = subprocess.Popen(
        sweep_command(config, 4), stdout=log, stderr=subprocess.STDOUT, env=worker_env()
    )
    deadline, study, running = time.time() + 180, None, None
    while time.time() < deadline and worker.poll() is None:
        time.sleep(0.2)
        if study is None:
            try:
                study = load_study(tmp_path)
            except Exception:  # the worker has not created the database or the study yet
                continue
        trials = study.get_trials()
        finished = [t for t in trials if t.state == TrialState.COMPLETE]
        running = next((t for t in trials if t.state == TrialState.RUNNING), None)
        run_dir = running.user_attrs.get("run_dir") if running else None
        # run.json is written just before training starts: then the trial is surely mid-run.
        if len(finished) >= 2 and run_dir and Path(run_dir, "run.json").exists():
            break
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    log.close()
    assert running is not None, (tmp_path / "killed.log").read_text()[-3000:]
    before = {t.number: t.value for t in load_study(tmp_path).get_trials() if t.state == TrialState.COMPLETE}
    assert len(before) >= 2

    capsys.readouterr()
    result = api.sweep(config, trials=4)

    assert f"resuming study search: {len(before)} of 4 trials done" in capsys.readouterr().out
    trials = {t.number: t for t in load_study(tmp_path).get_trials()}
    assert {n: trials[n].value for n in before} == before
    assert all(trials[n].state == TrialState.COMPLETE for n in before)
    assert trials[running.number].state == TrialState.FAIL
    retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == running.number)
    assert retry.params == running.params and retry.state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 4
    assert result["states"] == {"COMPLETE": 4, "FAIL": 1}
    killed_run = Path(running.user_attrs["run_dir"], "run.json")
    assert json.loads(killed_run.read_text())["status"] == "killed"


def test_a_mistyped_space_key_fails_before_any_trial(tmp_path, tiny_model):
    space = {**SPACE, "train.learnin_rate": {"low": 1e-4, "high": 1e-2}}
    with pytest.raises(TunesmithError, match=r"sweep\.space\.train\.learnin_rate") as error:
        api.sweep(write_config(tmp_path, tiny_model, space=space))
    assert "did you mean 'learning_rate'?" in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_space_errors_name_the_fix(tmp_path, tiny_model):
    with pytest.raises(TunesmithError, match="sweep.space is missing or empty"):
        api.sweep(write_config(tmp_path, tiny_model, space={}))
    whole = {"method.lora.r": {"low": 2, "high": 16}}
    with pytest.raises(TunesmithError, match=r"method\.lora\.r takes whole numbers; add `integer: true`"):
        api.sweep(write_config(tmp_path, tiny_model, space=whole))
    assert not (tmp_path / "runs").exists()


def test_classification_sweeps_maximize_the_named_validation_metric(tmp_path):
    raw = {
        "task": "text-classification",
        "model": {"name": "some/model"},
        "data": {"train_file": "train.csv"},
        "train": {"metric": "accuracy"},
        "sweep": {
            "space": {
                "train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
                "method.lora.target_modules": {"choices": ["all-linear", ["query", "value"]]},
            },
            "trials": 3,
        },
    }
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(raw))

    sweep = plan_sweep(path, ["sweep.metric=f1_macro"], None, None, None)

    assert (sweep.metric, sweep.direction, sweep.target) == ("eval_f1_macro", "maximize", 3)
    assert sweep.folder == tmp_path / "runs" / "topics-sweep"
    assert sweep.storage_url == f"sqlite:///{tmp_path / 'runs' / 'topics-sweep' / 'study.db'}"
    # Optuna stores scalar choices only: a list choice travels as JSON text and comes back as the list.
    modules = sweep.space["method.lora.target_modules"]
    assert distribution(modules).choices == ("all-linear", '["query", "value"]')
    assert config_value(modules, '["query", "value"]') == ["query", "value"]
    summary = {"validation": {"accuracy": 0.9, "f1_macro": 0.75}, "best_metric": 0.9}
    assert objective_value(summary, load_config(path), sweep.metric, None) == 0.75


def test_report_explains_missing_importances_and_escapes_text(tmp_path):
    trials = [
        {"number": 0, "state": "COMPLETE", "value": 1.5, "params": {"x": 0.1}, "run_dir": "runs/a"},
        {"number": 1, "state": "FAIL", "value": None, "params": {"x": 0.9}, "error": "<b>boom</b>"},
    ]
    page = write_sweep_report(
        tmp_path / "report.html", "s", "eval_loss", "minimize", trials, {}, "need at least 2 completed trials"
    ).read_text()

    assert '<img id="optimization-history"' in page and 'id="param-importances"' not in page
    assert "need at least 2 completed trials" in page
    assert "&lt;b&gt;boom&lt;/b&gt;" in page and "<b>boom" not in page
    assert "Best: trial 0, eval_loss = 1.5." in page
