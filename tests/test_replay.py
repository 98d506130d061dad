"""data.mix and data.replay: stated shares over many batches, self-replay generated once per model, refusals."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import prompt_response_rows, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.data.mix import mix_train
from tunesmith.data.prepare import check_data, encode
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.errors import TunesmithError
from tunesmith.tasks.causal_lm import replay


def source_of(example) -> str:
    where = example.where
    return where[where.rindex("(") + 1 : -1] if where.endswith(")") else "task"


@pytest.fixture
def mixed_data(tmp_path, make_config):
    general = write_jsonl(tmp_path / "general.jsonl", prompt_response_rows(30, seed=7))
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"a {i}"}]}
            for i in range(200)
        ],
    )
    texts = tmp_path / "replay.txt"
    texts.write_text("".join(f"plain general text number {i}\n" for i in range(50)))
    raw = make_config(
        rows=150,
        data={
            "validation_ratio": 0.2,
            "test_ratio": 0,
            "mix": [{"file": str(general), "weight": 0.5}, {"file": str(chat), "weight": 0.25}],
            "replay": {"share": 0.1, "source": str(texts)},
        },
    )
    cfg = config_from_dict(raw)
    checked = check_data(cfg.data)
    return cfg, mix_train(checked, cfg.data, checked.sources)


def test_each_epoch_holds_each_source_at_its_weight_and_replay_at_its_share(mixed_data):
    cfg, checked = mixed_data
    counts = Counter(source_of(example) for example in checked.train)
    general, chat = (source.file for source in cfg.data.mix)
    # 120 task rows (150 less 20% validation); weights 0.5 and 0.25 beside train_weight 1 -> 60 and 30 rows;
    # replay 10% of the whole epoch: 210 / 0.9 * 0.1 = 23.3 -> 23 rows.
    assert counts == {"task": 120, general: 60, chat: 30, "replay": 23}
    report = checked.report["mix"]
    assert report["rows_per_epoch"] == 233 and report["task_share"] == round(120 / 233, 4)
    shares = {source["source"]: source["share"] for source in report["sources"]}
    assert shares[general] == round(60 / 233, 4) and shares[f"replay: {cfg.data.replay.source}"] == round(
        23 / 233, 4
    )
    # 30 general rows for 60 draws: each used twice, none three times
    general_rows = Counter(example.key for example in checked.train if source_of(example) == general)
    assert set(general_rows.values()) == {2} and report["sources"][0]["repeats_per_epoch"] == 30
    # nothing drawn repeats a validation row
    assert not {e.key for e in checked.validation} & {e.key for e in checked.train if source_of(e) != "task"}


def test_the_trainers_shuffle_gives_the_stated_shares_over_many_batches(mixed_data):
    """Batches as the Trainer draws them (a seeded RandomSampler per epoch): the replay share holds across batches,
    spread through the epoch rather than bunched at one end."""
    _, checked = mixed_data
    is_replay = torch.tensor([source_of(example) == "replay" for example in checked.train])
    generator = torch.Generator().manual_seed(42)
    batch_shares, first_half = [], []
    for _ in range(20):  # epochs
        order = torch.randperm(len(checked.train), generator=generator)
        batches = order.split(8)
        batch_shares += [is_replay[batch].float().mean().item() for batch in batches]
        half = len(batches) // 2
        first_half.append(is_replay[torch.cat(batches[:half])].sum().item() / is_replay.sum().item())
    assert sum(batch_shares) / len(batch_shares) == pytest.approx(23 / 233, abs=0.01)
    assert sum(share > 0 for share in batch_shares) > 0.4 * len(batch_shares)  # most batches hold some replay
    assert 0.35 < sum(first_half) / len(first_half) < 0.65


def test_a_bad_mix_row_is_named_by_file_and_line(tmp_path, make_config):
    bad = write_jsonl(tmp_path / "general.jsonl", [*prompt_response_rows(3), {"prompt": "only a prompt"}])
    cfg = config_from_dict(make_config(data={"mix": [{"file": str(bad), "weight": 1}]}))
    checked = check_data(cfg.data)
    assert f"{bad}:4: missing field 'response'" in " ".join(checked.problems)


def test_replay_is_refused_where_the_task_cannot_train_general_text(tmp_path, tiny_bert):
    from conftest import classification_config, topic_rows

    train = write_jsonl(tmp_path / "topics.jsonl", topic_rows(20))
    raw = classification_config(tmp_path, tiny_bert, "text-classification", train)
    raw["data"]["replay"] = {"share": 0.05}
    with pytest.raises(
        TunesmithError, match="data.mix and data.replay are not for text-classification: general text"
    ):
        config_from_dict(raw)


@pytest.fixture
def self_replay_config(tmp_path, make_config):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"tell me about topic {i}\n" for i in range(24)))
    # A random tiny model rarely says <|im_end|>: hot sampling over a short answer lets some answers end.
    settings = {"source": "self", "prompts": str(prompts), "max_new_tokens": 40, "temperature": 3.0}
    return config_from_dict(make_config(data={"replay": settings}))


def test_self_replay_is_generated_once_and_reused_by_model_fingerprint(
    self_replay_config, tiny_model, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    calls = []
    real = replay.generate_answers
    monkeypatch.setattr(replay, "generate_answers", lambda *a, **k: calls.append(1) or real(*a, **k))
    renderer = Renderer(AutoTokenizer.from_pretrained(tiny_model))
    cache = tmp_path / "cache"
    pool, report = replay.self_replay(self_replay_config, str(tiny_model), renderer, [], cache)
    again, report_again = replay.self_replay(self_replay_config, str(tiny_model), renderer, [], cache)
    assert len(calls) == 1 and not report["cache"]["hit"] and report_again["cache"]["hit"]
    assert again == pool and 0 < len(pool) == report["answers_kept"] <= 24
    assert all(
        e.messages[-2] == ("user", f"tell me about topic {int(e.where.split(':')[1]) - 1}") for e in pool
    )
    assert report["generation"]["temperature"] == 3.0 and report["generation"]["seed"] == 42
    # Another model (here: the same weights in another folder) is another fingerprint: generated anew.
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    replay.self_replay(self_replay_config, str(copy), renderer, [], cache)
    assert len(calls) == 2
    # Other generation settings are another key too.
    self_replay_config.data.replay.temperature = 2.5
    replay.self_replay(self_replay_config, str(tiny_model), renderer, [], cache)
    assert len(calls) == 3 and len(list((cache / "replay").glob("*.json"))) == 3


def test_self_replay_leaves_out_answers_over_max_length_so_the_drawn_share_is_trained(
    self_replay_config, tiny_model, tmp_path
):
    from transformers import AutoTokenizer

    renderer = Renderer(AutoTokenizer.from_pretrained(tiny_model))
    cache = tmp_path / "cache"
    pool, report = replay.self_replay(self_replay_config, str(tiny_model), renderer, [], cache)
    lengths = [len(encode(e, renderer, LossMask.of(self_replay_config.data))["input_ids"]) for e in pool]
    assert report["left_out_over_max_length"] == 0 and len(set(lengths)) > 1
    # the same answers (from the cache), a max_length between the shortest and the longest row
    self_replay_config.data.max_length = sorted(lengths)[len(lengths) // 2]
    fitting, narrow = replay.self_replay(self_replay_config, str(tiny_model), renderer, [], cache)
    limit = self_replay_config.data.max_length
    assert narrow["cache"]["hit"] and len(fitting) == sum(n <= limit for n in lengths)
    assert narrow["left_out_over_max_length"] == sum(n > limit for n in lengths) > 0
    assert narrow["answers_kept"] + narrow["left_out_over_max_length"] == report["answers_kept"]


def test_a_run_with_self_replay_trains_its_answers_and_reports_their_share(self_replay_config):
    summary = api.train(self_replay_config)
    run = Path(summary["run_dir"])
    report = json.loads((run / "data_report.json").read_text())
    mix = report["mix"]
    kept = mix["self_replay"]["answers_kept"]
    assert mix["task_rows_per_epoch"] == 32 and mix["sources"][0]["rows_per_epoch"] == round(32 * 0.05 / 0.95)
    assert report["train_examples"] == 32 + mix["sources"][0]["rows_per_epoch"] and kept > 0
    # trained like the task's rows: the answer supervised, the prompt not
    assert report["train_tokens"]["supervised_tokens"] < report["train_tokens"]["tokens"]
    shares = mix["supervised_token_shares"]
    assert set(shares) == {"task", "replay: self"} and sum(shares.values()) == pytest.approx(1, abs=1e-3)
    assert 0 < shares["replay: self"] < 1
    assert summary["status"] == "finished"


def test_data_check_plans_each_sources_rows_per_epoch_before_anything_is_generated(tmp_path, make_config):
    general = write_jsonl(tmp_path / "general.jsonl", prompt_response_rows(30, seed=7))
    raw = make_config(
        rows=100,
        data={"test_ratio": 0, "mix": [{"file": str(general), "weight": 0.5}], "replay": {"share": 0.1}},
    )
    checked = api.check_data(config_from_dict(raw))
    mix = checked.report["mix"]
    # 80 task rows; the mix source 40 a epoch; replay 10% of 120 / 0.9 = 13.3 -> 13 (its answers generated at training)
    assert [(s["rows_per_epoch"], s["pool"]) for s in mix["sources"]] == [
        (40, 30),
        (13, "generated at training"),
    ]
    assert mix["rows_per_epoch"] == 133 and not (tmp_path / "cache" / "replay").exists()
