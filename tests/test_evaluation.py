"""Evaluation that tells the truth: eval/baseline, forgetting drift, overfitting signal, report.html, compare."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.lm import language_model_loss
from tunesmith.evaluation.overfitting import overfitting_signal

REFERENCE_TEXT = [
    {"text": "0123456789 " * 5 + str(i)} for i in range(20)
]  # digits: nothing like the training words


def _train(folder: Path, model: Path, **sections) -> dict:
    from conftest import tiny_config, write_jsonl

    reference = write_jsonl(folder / "reference.jsonl", REFERENCE_TEXT)
    raw = tiny_config(folder, model, rows=60, **sections)
    raw["eval"] |= {"reference": str(reference)}
    return api.train(config_from_dict(raw))


@pytest.fixture(scope="module")
def forgetting_run(tmp_path_factory, tiny_model):
    """Made to forget: full fine-tuning at a high learning rate for many steps."""
    folder = tmp_path_factory.mktemp("forget")
    return _train(
        folder,
        tiny_model,
        method={"name": "full"},
        train={"max_steps": 30, "eval_steps": 3, "learning_rate": 5e-2},
    )


@pytest.fixture(scope="module")
def gentle_run(tmp_path_factory, tiny_model):
    """Barely trains: LoRA, two steps at a tiny learning rate."""
    folder = tmp_path_factory.mktemp("gentle")
    return _train(folder, tiny_model, train={"max_steps": 2, "eval_steps": 1, "learning_rate": 1e-6})


def test_forgetting_is_measured_and_flagged(forgetting_run, gentle_run):
    for summary in (forgetting_run, gentle_run):
        result = summary["forgetting"]
        assert result["before"]["tokens"] == result["after"]["tokens"] > 0
    assert forgetting_run["forgetting"]["drift_percent"] > 50
    assert forgetting_run["forgetting"]["warning"] is True
    # the warning names the remedy: replay, with a larger share the further past the threshold (>50% here)
    assert forgetting_run["forgetting"]["remedy"].startswith("replay general text: data.replay: {share: 0.1}")
    assert abs(gentle_run["forgetting"]["drift_percent"]) < 0.5
    assert gentle_run["forgetting"]["warning"] is False


def test_reference_loss_matches_the_model_own_loss(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = [{"input_ids": [5, 17, 33, 2, 90, 41, 8], "labels": [5, 17, 33, 2, 90, 41, 8]}]
    with torch.no_grad():
        expected = model(
            input_ids=torch.tensor([rows[0]["input_ids"]]), labels=torch.tensor([rows[0]["labels"]])
        ).loss
    scored = language_model_loss(model, rows, pad_token_id=0, batch_size=4)
    assert scored["loss"] == pytest.approx(expected.item(), abs=1e-5)
    assert scored["perplexity"] == pytest.approx(math.exp(scored["loss"]), rel=1e-4)
    assert scored["tokens"] == 6
    # Batching with padding changes nothing: the same rows scored one by one and together agree.
    more = rows + [{"input_ids": [7, 8, 9], "labels": [7, 8, 9]}]
    together = language_model_loss(model, more, pad_token_id=0, batch_size=2)["loss"]
    apart = [language_model_loss(model, [r], pad_token_id=0, batch_size=1) for r in more]
    weighted = sum(a["loss"] * a["tokens"] for a in apart) / sum(a["tokens"] for a in apart)
    assert together == pytest.approx(weighted, abs=1e-5)


def test_overfitting_signal_rules():
    rising_eval_falling_train = [
        {"step": 1, "loss": 3.0},
        {"step": 1, "eval_loss": 2.0},
        {"step": 2, "loss": 2.5},
        {"step": 2, "eval_loss": 2.1},
        {"step": 3, "loss": 2.0},
        {"step": 3, "eval_loss": 2.2},
        {"step": 4, "loss": 1.5},
        {"step": 4, "eval_loss": 2.3},
    ]
    signal = overfitting_signal(rising_eval_falling_train, patience=3)
    assert signal["detected_at_step"] == 4 and signal["best_step"] == 1 and signal["rising_since_step"] == 1
    assert overfitting_signal(rising_eval_falling_train, patience=4) is None
    both_rising = [r | ({"loss": 1.0 + r["step"]} if "loss" in r else {}) for r in rising_eval_falling_train]
    assert overfitting_signal(both_rising, patience=3) is None


def test_overfitting_flagged_on_a_run_that_overfits(forgetting_run):
    run = Path(forgetting_run["run_dir"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    signal = forgetting_run["overfitting"]
    assert signal is not None
    evaluations = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    assert signal["best_step"] == min(evaluations, key=lambda pair: pair[1])[0]
    assert signal["best_eval_loss"] == min(loss for _, loss in evaluations)


def _text_of(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', page)
    assert match, element_id
    return match.group(1).strip()


def test_report_numbers_come_from_the_run_files(forgetting_run):
    run = Path(forgetting_run["run_dir"])
    page = (run / "report.html").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if "loss" in r]
    assert float(_text_of(page, "last-train-loss")) == pytest.approx(train_losses[-1], abs=1e-4)
    assert float(_text_of(page, "first-train-loss")) == pytest.approx(train_losses[0], abs=1e-4)
    assert int(_text_of(page, "global-step")) == max(r["step"] for r in records) == 30
    best = min((r["eval_loss"], r["step"]) for r in records if "eval_loss" in r)
    assert int(_text_of(page, "best-step")) == best[1]
    assert float(_text_of(page, "best-metric")) == pytest.approx(best[0], abs=1e-4)
    summary = json.loads((run / "run.json").read_text())
    drift = summary["forgetting"]["drift_percent"]
    assert _text_of(page, "forgetting-drift") == f"{drift:+.2f}%"
    evaluations = re.search(r'id="evaluations-table".*?</table>', page, re.S).group(0)
    assert evaluations.count("<tr>") == 1 + sum("eval_loss" in r for r in records)
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))
    assert {"plot-loss", "plot-lr", "plot-lengths", "plot-throughput"} <= set(data["plots"])
    for plot in data["plots"]:
        assert re.search(rf'<img class="plot" id="{plot}" alt="[^"]+" src="data:image/png;base64,', page)
    assert "overfitting-signal" in page and "Validation loss rose" in page
    # `tunesmith report` rebuilds the same page from the same files.
    rebuilt = api.report(run).read_text()
    assert _text_of(rebuilt, "best-step") == _text_of(page, "best-step")


def test_eval_with_baseline_side_by_side(gentle_run, tiny_model):
    from transformers import AutoModelForCausalLM

    run = Path(gentle_run["run_dir"])
    result = api.evaluate(run, baseline=True, generations=3)
    tuned, base = result["tuned"], result["baseline"]
    assert tuned["examples"] == base["examples"] == result["examples"] == 12
    assert tuned["generated_examples"] == 3
    assert tuned["perplexity"] == pytest.approx(math.exp(tuned["loss"]), rel=1e-4)
    # The baseline is the untouched base model: scoring it independently gives the same loss.
    folder = Path(result["folder"])
    assert folder == run / "eval" / "validation"
    generations = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 3 and all(
        {"prompt", "reference", "output", "base_output"} <= set(g) for g in generations
    )
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(
        [g["output"] for g in generations], [[g["reference"] for g in generations]]
    ).score
    assert tuned["bleu"] == pytest.approx(bleu, abs=0.01)
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model)
    from tunesmith.data.prepare import check_data, tokenize_data
    from tunesmith.data.templates import Renderer
    from tunesmith.run_folder import RunFolder

    cfg = RunFolder.open(run).load_config()
    renderer = Renderer(
        __import__("transformers").AutoTokenizer.from_pretrained(tiny_model), cfg.data.template
    )
    rows = tokenize_data(check_data(cfg.data), cfg.data, renderer, None)["validation"]
    assert base["loss"] == pytest.approx(language_model_loss(base_model, rows, 0, 8)["loss"], abs=1e-5)
    assert "base" in result["table"] and "difference" in result["table"]
    # A second evaluation never overwrites the first; --data scores every row of another file.
    from conftest import prompt_response_rows, write_jsonl

    extra = write_jsonl(run.parent / "extra.jsonl", prompt_response_rows(5, seed=9))
    second = api.evaluate(run, data=extra, generations=0)
    assert second["examples"] == 5 and Path(second["folder"]).name == "extra"
    assert "rouge1" not in second["tuned"]
    page = (run / "report.html").read_text()
    assert 'id="eval-results"' in page


def test_eval_refuses_unfinished_runs_and_missing_data(gentle_run, make_config, tmp_path):
    from transformers import TrainerCallback

    class StopAtOne(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_save = control.should_training_stop = True

    raw = make_config(rows=12, train={"max_steps": 4}, eval={"samples": 0, "before_training": False})
    stopped = api.train(config_from_dict(raw), callbacks=[StopAtOne()])
    assert stopped["status"] == "stopped" and stopped["global_step"] == 1  # an unfinished run, for real
    with pytest.raises(
        TunesmithError,
        match=r"^eval: .* has not finished training \(status: stopped\); finish it, or continue it with",
    ):
        api.evaluate(stopped["run_dir"])
    assert not (Path(stopped["run_dir"]) / "eval").exists()  # nothing was scored or written
    with pytest.raises(TunesmithError, match="not found"):
        api.evaluate(gentle_run["run_dir"], data=tmp_path / "nope.jsonl")


def test_compare_page(forgetting_run, gentle_run, tmp_path):
    page_path = api.compare([forgetting_run["run_dir"], gentle_run["run_dir"]], tmp_path / "compare.html")
    page = page_path.read_text()
    assert 'id="plot-validation-loss"' in page and 'id="plot-train-loss"' in page
    settings = re.search(r'id="settings-table".*?</table>', page, re.S).group(0)
    assert "train.learning_rate" in settings and "method.name" in settings
    assert "data.max_length" not in settings  # shared settings are not listed
    with pytest.raises(TunesmithError, match="at least two"):
        api.compare([gentle_run["run_dir"]])


def test_reference_errors_name_the_row(make_config, tmp_path):
    from conftest import write_jsonl

    reference = write_jsonl(tmp_path / "ref.jsonl", [{"text": "fine"}, {"body": "wrong field"}])
    raw = make_config(eval={"reference": str(reference), "samples": 0})
    with pytest.raises(TunesmithError, match=r"ref.jsonl:2: no text in field 'text'"):
        api.train(config_from_dict(raw))


def test_classification_eval_and_report(tmp_path, tiny_bert):
    from conftest import classification_config, topic_rows, write_jsonl

    data = write_jsonl(tmp_path / "topics.jsonl", topic_rows(90))
    raw = classification_config(tmp_path, tiny_bert, "text-classification", data, method={"name": "lora"})
    summary = api.train(config_from_dict(raw))
    run = Path(summary["run_dir"])
    trained = json.loads((run / "evaluation.json").read_text())
    result = api.evaluate(run, baseline=True)
    # Same validation split, same weights: the scores equal those written at the end of training.
    assert result["tuned"]["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-9)
    assert result["tuned"]["f1_macro"] == pytest.approx(trained["f1_macro"], abs=1e-9)
    assert result["examples"] == trained["examples"]
    assert result["baseline"]["accuracy"] < result["tuned"]["accuracy"]  # a fresh head is near chance
    page = (run / "report.html").read_text()
    data_block = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))
    assert {"plot-loss", "plot-confusion", "plot-classes", "plot-metrics"} <= set(data_block["plots"])
    assert float(_text_of(page, "validation-accuracy")) == pytest.approx(
        summary["validation"]["accuracy"], abs=1e-4
    )


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium driven by its own chromedriver (`make setup` installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "run `make setup`: it installs chromium and chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _check_page(driver, page: Path) -> list[str]:
    """Open the page; every plot the page lists must be a decoded image; no console errors. Returns the plots."""
    from selenium.webdriver.common.by import By

    driver.get(page.as_uri())
    listed = json.loads(driver.find_element(By.ID, "report-data").get_attribute("textContent"))["plots"]
    assert listed
    for plot in listed:
        image = driver.find_element(By.ID, plot)
        width = driver.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : 0", image)
        assert width > 200, f"{plot} did not render"
    shown = driver.execute_script("return Array.from(document.images).map(i => i.id)")
    assert sorted(shown) == sorted(listed)  # no image on the page that the data block does not list
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    return listed


def test_report_renders_in_headless_chromium(browser, forgetting_run, gentle_run, tmp_path):
    from selenium.webdriver.common.by import By

    run = Path(forgetting_run["run_dir"])
    plots = _check_page(browser, run / "report.html")
    assert {"plot-loss", "plot-lr", "plot-lengths", "plot-throughput"} <= set(plots)
    # The sortable evaluations table sorts by validation loss when its header is clicked.
    header = browser.find_element(By.XPATH, "//table[@id='evaluations-table']//th[text()='eval_loss']")
    header.click()
    column = browser.execute_script(
        "const t = document.getElementById('evaluations-table');"
        "const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent === 'eval_loss');"
        "return Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[i].textContent));"
    )
    assert column == sorted(column)
    assert not [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    comparison = api.compare([forgetting_run["run_dir"], gentle_run["run_dir"]], tmp_path / "comparison.html")
    assert {"plot-validation-loss", "plot-train-loss"} <= set(_check_page(browser, comparison))


def test_classification_forgetting_probe(tmp_path, tiny_bert):
    """A labelled reference task is probed (linear probe, cross-validated) before and after fine-tuning."""
    from conftest import classification_config, topic_rows, write_jsonl

    data = write_jsonl(tmp_path / "topics.jsonl", topic_rows(60))
    reference = write_jsonl(
        tmp_path / "reference.jsonl",
        [
            {"text": f"{'even' if i % 2 == 0 else 'odd'} number {i} about", "label": str(i % 2)}
            for i in range(40)
        ],
    )
    raw = classification_config(
        tmp_path, tiny_bert, "text-classification", data, eval={"reference": str(reference)}
    )
    summary = api.train(config_from_dict(raw))
    result = summary["forgetting"]
    assert result["metric"] == "accuracy" and result["before"]["examples"] == 40
    before, after = result["before"]["accuracy"], result["after"]["accuracy"]
    assert 0 <= before <= 1 and 0 <= after <= 1
    page = (Path(summary["run_dir"]) / "report.html").read_text()
    assert "Linear probe" in page and _text_of(page, "forgetting-drift") == f"{result['drift_percent']:+.2f}%"


def test_a_fall_in_probe_accuracy_is_forgetting_and_a_rise_in_perplexity_too():
    from tunesmith.evaluation.forgetting import drift

    fell = drift({"accuracy": 0.80}, {"accuracy": 0.60}, 10.0, "accuracy")
    assert fell["drift_percent"] == pytest.approx(-25.0) and fell["warning"]  # 0.8 -> 0.6 is a quarter lost
    assert not drift({"accuracy": 0.60}, {"accuracy": 0.80}, 10.0, "accuracy")["warning"]  # a gain is no loss
    assert drift({"perplexity": 8.0}, {"perplexity": 10.0}, 10.0)["warning"]  # +25%
    assert not drift({"perplexity": 10.0}, {"perplexity": 8.0}, 10.0)["warning"]


def test_the_replay_remedy_grows_with_the_drift_and_with_the_share_already_used():
    from tunesmith.evaluation.forgetting import describe, drift, replay_remedy

    assert "data.replay: {share: 0.05}" in replay_remedy(15.0, 10.0, None)
    assert "data.replay: {share: 0.1}" in replay_remedy(25.0, 10.0, None)
    assert replay_remedy(25.0, 10.0, 0.05) == "raise data.replay.share from 0.05 to 0.1"
    assert replay_remedy(25.0, 10.0, 0.2) == "raise data.replay.share from 0.2 to 0.3"
    flagged = drift({"perplexity": 8.0}, {"perplexity": 10.0}, 10.0) | {"remedy": "raise data.replay.share"}
    assert "forgotten general knowledge (raise data.replay.share; or lower the learning rate" in describe(
        flagged, "r"
    )


def test_cli_report_compare_and_eval(gentle_run, forgetting_run, tmp_path, capsys):
    from tunesmith.cli import main

    run = gentle_run["run_dir"]
    (Path(run) / "report.html").unlink()
    assert main(["report", run]) == 0
    assert (Path(run) / "report.html").exists() and "wrote" in capsys.readouterr().out
    assert main(["compare", run, forgetting_run["run_dir"], "--output", str(tmp_path / "c.html")]) == 0
    assert (tmp_path / "c.html").exists()
    assert main(["eval", run, "--generations", "0"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^loss\s+\d+\.\d{4}$", printed, re.M) and "perplexity" in printed
    assert main(["eval", str(tmp_path)]) == 2  # not a run folder: a one-line error, no traceback
    assert "not a tunesmith run folder" in capsys.readouterr().err


def test_baseline_of_a_full_fine_tune_reloads_the_base(forgetting_run, gentle_run):
    """Full fine-tuning has no adapter to switch off: the base is loaded again. Both runs share base and data,
    so their baselines agree to the last digit, whichever way the base was obtained."""
    full = api.evaluate(forgetting_run["run_dir"], baseline=True, generations=0)
    lora = api.evaluate(gentle_run["run_dir"], baseline=True, generations=0)
    assert full["baseline"]["loss"] == pytest.approx(lora["baseline"]["loss"], abs=1e-6)
    assert full["tuned"]["loss"] != pytest.approx(full["baseline"]["loss"], abs=1e-3)


def test_reports_of_a_stopped_run_and_a_features_run(tmp_path, tiny_bert, make_config, capsys):
    from transformers import TrainerCallback

    from conftest import classification_config, topic_rows, write_jsonl

    class StopAtTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_save = control.should_training_stop = True

    stopped = api.train(config_from_dict(make_config(eval={"samples": 0})), callbacks=[StopAtTwo()])
    assert stopped["status"] == "stopped"
    page = (Path(stopped["run_dir"]) / "report.html").read_text()
    assert _text_of(page, "status") == "stopped" and int(_text_of(page, "global-step")) == 2
    assert "could not be written" not in capsys.readouterr().out

    data = write_jsonl(tmp_path / "topics.jsonl", topic_rows(60))
    raw = classification_config(tmp_path, tiny_bert, "text-classification", data, method={"name": "features"})
    summary = api.train(config_from_dict(raw))
    page = (Path(summary["run_dir"]) / "report.html").read_text()
    plots = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))["plots"]
    assert "plot-confusion" in plots and "plot-loss" not in plots and "No losses were logged" in page
    assert float(_text_of(page, "validation-accuracy")) == pytest.approx(
        summary["validation"]["accuracy"], abs=1e-4
    )


def test_model_card_carries_forgetting_and_eval_results(gentle_run):
    from tunesmith.export.hub import model_card
    from tunesmith.run_folder import RunFolder

    run = RunFolder.open(gentle_run["run_dir"])
    result = api.evaluate(run.path, baseline=True, generations=0)
    card = model_card(run, "me/tiny")
    drift = gentle_run["forgetting"]["drift_percent"]
    assert f"({drift:+.2f}%)" in card and "forgetting check (reference perplexity" in card
    assert f"loss {result['tuned']['loss']:.4g} (base {result['baseline']['loss']:.4g})" in card
