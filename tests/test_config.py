import json

import pytest
import yaml

from tunesmith.cli import main
from tunesmith.config import config_from_dict, load_config, starter_config
from tunesmith.errors import TunesmithError


def problems(raw: dict, overrides=None) -> list[str]:
    with pytest.raises(TunesmithError) as caught:
        config_from_dict(raw, overrides=overrides)
    return [line.strip() for line in caught.value.details]


BASE = {"model": {"name": "some/model"}, "data": {"train_file": "train.jsonl"}}


def with_section(section: str, **values) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw.setdefault(section, {}).update(values)
    return raw


def test_unknown_key_names_path_and_suggests_spelling():
    assert problems(with_section("train", learnig_rate=1e-4)) == [
        "train.learnig_rate: unknown key; did you mean 'learning_rate'?"
    ]


def test_unknown_section_lists_known_keys():
    (line,) = problems({**BASE, "trian": {}})
    assert line.startswith("trian: unknown key; did you mean 'train'?")


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        ("method", {"lora": {"r": 0}}, "method.lora.r: input should be greater than 0 (got 0)"),
        ("train", {"learning_rate": -1}, "train.learning_rate: input should be greater than 0 (got -1)"),
        (
            "train",
            {"batch_size": "four"},
            "train.batch_size: input should be a valid integer, unable to parse string as an integer (got 'four')",
        ),
        ("data", {"on_error": "ignore"}, "data.on_error: input should be 'stop' or 'skip' (got 'ignore')"),
        ("data", {"validation_ratio": 1.5}, "data.validation_ratio: input should be less than 1 (got 1.5)"),
    ],
)
def test_impossible_values_are_one_line_each(section, values, expected):
    assert problems(with_section(section, **values)) == [expected]


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("audio_field", "speech.audio_field"),
        ("source_field", "seq2seq.source_field"),
        ("target_field", "seq2seq.target_field"),
        ("source_prefix", "seq2seq.source_prefix"),
        ("max_target_length", "seq2seq.max_target_length or speech.max_target_length"),
        *[
            (key, f"classification.{key}")
            for key in (
                "label_field",
                "text_pair_field",
                "file_field",
                "labels",
                "multi_label",
                "label_separator",
                "max_windows",
                "augment",
                "clip_seconds",
            )
        ],
    ],
)
def test_a_key_moved_to_a_task_section_says_where_it_went(key, where):
    assert problems(with_section("data", **{key: "x"})) == [f"data.{key}: moved to {where}; write it there"]


def test_the_classification_section_is_checked_and_kept_where_it_is_written(tmp_path):
    text = with_section("data") | {"task": "text-classification"}
    assert problems(text, ["data.label_field=topic"]) == [
        "data.label_field: moved to classification.label_field; write it there"
    ]
    assert problems({**text, "classification": {"max_windows": 0}}) == [
        "classification.max_windows: input should be greater than or equal to 1 (got 0)"
    ]
    cfg = config_from_dict(text, overrides=["classification.label_field=topic", "data.on_overflow=windows"])
    assert cfg.section("classification").label_field == "topic" and cfg.data.on_overflow == "windows"
    assert cfg.section("classification").max_windows == 4  # the section's default, as data.max_windows was
    from tunesmith.config import dump_config

    dump_config(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["classification"] == {"label_field": "topic"} and "label_field" not in written["data"]
    assert load_config(tmp_path / "config.yaml").section("classification") == cfg.section("classification")


def test_a_classification_section_on_another_task_is_refused():
    (line,) = problems({**BASE, "classification": {"multi_label": True}})
    assert line == (
        "classification: its settings are for the classification tasks, which causal-lm is not; remove the section"
    )


def test_missing_required_key():
    assert problems({"data": {"train_file": "x.jsonl"}}) == ["model: required key is missing; add it"]


def test_all_problems_reported_together():
    raw = with_section("train", learning_rate=-1, batch_size=0)
    assert len(problems(raw)) == 2


def test_set_overrides_are_typed_and_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_config(
        path, ["train.learning_rate=1e-4", "method.lora.target_modules=[q_proj, v_proj]", "data.packing=true"]
    )
    assert cfg.train.learning_rate == 1e-4
    assert cfg.method.section("lora").target_modules == ["q_proj", "v_proj"]
    assert cfg.data.packing is True
    assert cfg.data.train_file == str(tmp_path / "train.jsonl")  # relative to the config file
    with pytest.raises(TunesmithError, match="expected KEY=VALUE"):
        load_config(path, ["train.learning_rate"])
    with pytest.raises(TunesmithError) as caught:
        load_config(path, ["train.warmpu=3"])
    assert caught.value.details == ["  train.warmpu: unknown key; did you mean 'warmup'?"]


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: x\ndata: [unclosed\n")
    with pytest.raises(TunesmithError, match=r"c\.yaml line \d+, column \d+"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(TunesmithError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_starter_config_is_valid_once_required_keys_are_filled():
    raw = yaml.safe_load(starter_config("sft"))
    cfg = config_from_dict(raw)
    assert cfg.method.name == "lora"
    assert cfg.data.on_error == "stop"


@pytest.mark.parametrize(
    "content",
    [
        "model: {name: x}\ndata: {train_file: t.jsonl}\ntrain: {learning_rate: -1}\n",
        "model: {name: x}\ndata: {train_file: t.jsonl}\nmethod: {lora: {r: 0}}\n",
        "model: {name: x}\ndata: {train_file: t.jsonl}\nbogus: 1\n",
        "model: [\n",
        "- a list\n",
    ],
)
def test_cli_prints_config_errors_without_traceback(tmp_path, capsys, content):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: ")
    for line in err.strip().splitlines()[1:]:
        assert ": " in line  # every further line is 'key.path: problem'


def test_init_writes_file_and_never_overwrites(tmp_path, capsys):
    target = tmp_path / "my.yaml"
    assert main(["init", "sft", "-o", str(target)]) == 0
    assert "method:" in target.read_text()
    assert main(["init", "sft", "-o", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_preference_loss_is_a_registered_name_with_a_did_you_mean():
    raw = {**BASE, "task": "preference"}
    assert problems({**raw, "preference": {"loss": "dpoo"}}) == [
        "preference.loss: unknown preference loss 'dpoo'; did you mean 'dpo'?"
    ]
    (line,) = problems({**raw, "preference": {"loss": "zzz"}})
    assert line.startswith("preference.loss: unknown preference loss 'zzz'; choose one of dpo, ipo")
    assert problems(raw, overrides=["preference.bta=0.2"]) == [
        "preference.bta: unknown key; did you mean 'beta'?"
    ]


def test_a_task_section_survives_model_dump_as_plan_and_compare_read_it():
    cfg = config_from_dict({**BASE, "task": "preference", "preference": {"loss": "kto", "beta": 0.2}})
    assert cfg.section("preference").loss == "kto"
    dumped = cfg.model_dump(mode="json", exclude_unset=True)
    assert dumped["preference"] == {"loss": "kto", "beta": 0.2}
    again = config_from_dict(json.loads(cfg.model_dump_json(exclude_unset=True)))
    assert again.section("preference") == cfg.section("preference")


def test_a_methods_own_settings_are_mounted_checked_and_written_back(tmp_path, monkeypatch):
    from pydantic import Field

    from tunesmith import registry
    from tunesmith.config import Section, dump_config
    from tunesmith.methods import Method

    class PromptSettings(Section):  # a new method's settings, in its own module: no line in config.py
        tokens: int = Field(20, gt=0)

    registry.load_plugins()
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    monkeypatch.setattr(registry, "METHOD_SECTIONS", dict(registry.METHOD_SECTIONS))
    registry.register_method(
        Method(
            "prompt",
            lambda model, cfg: model,
            False,
            "soft prompts",
            section="prompt",
            settings=PromptSettings,
        )
    )
    method = {"name": "prompt", "prompt": {"tokenz": 5}}
    assert problems({**BASE, "method": method}) == [
        "method.prompt.tokenz: unknown key; did you mean 'tokens'?"
    ]
    assert problems({**BASE, "method": {"name": "prompt", "promt": {}}}) == [
        "method.promt: unknown key; did you mean 'prompt'?"
    ]
    assert (
        config_from_dict({**BASE, "method": {"name": "prompt"}}).method.section("prompt") == PromptSettings()
    )
    cfg = config_from_dict(
        {**BASE, "method": {"name": "prompt", "lora": {"r": 4}}}, overrides=["method.prompt.tokens=8"]
    )
    assert cfg.method.section("prompt").tokens == 8 and cfg.method.section("lora").r == 4
    dump_config(cfg, tmp_path / "again.yaml")
    written = yaml.safe_load((tmp_path / "again.yaml").read_text())["method"]
    assert written == {"name": "prompt", "lora": {"r": 4}, "prompt": {"tokens": 8}}  # as written, no defaults
    again = load_config(tmp_path / "again.yaml")
    assert again.method.section("prompt") == cfg.method.section("prompt") and again.method == cfg.method


def test_method_last_n_is_short_for_freeze_last_n_and_written_once(tmp_path):
    from tunesmith.config import dump_config

    cfg = config_from_dict({**BASE, "method": {"name": "last_n", "last_n": 1}})
    assert cfg.method.section("freeze").last_n == 1
    dump_config(cfg, tmp_path / "again.yaml")
    assert yaml.safe_load((tmp_path / "again.yaml").read_text())["method"] == {"name": "last_n", "last_n": 1}
