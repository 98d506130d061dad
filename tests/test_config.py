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
    assert cfg.method.lora.target_modules == ["q_proj", "v_proj"]
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
