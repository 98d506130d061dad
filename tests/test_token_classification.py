"""Token classification (NER): rows checked and named, tags aligned to sub-tokens, and a tiny BERT trained,
scored with seqeval, evaluated against its base, tagging new text as character spans, exported and served."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.config import config_from_dict, dump_config, load_config
from tunesmith.errors import TunesmithError
from tunesmith.tasks.token_classification.data import check_tagged, from_spans, tag_problem
from tunesmith.tasks.token_classification.run import spans
from tunesmith.tasks.token_classification.settings import TokenClassificationConfig
from tunesmith.tasks.token_classification.tokens import encode, labels_for, word_predictions

PEOPLE, PLACES = ["cat", "dogs"], ["park", "market"]
FILLER = ["the", "sat", "on", "a", "while", "ran", "to", "and", "about"]


def tagged_rows(count: int, seed: int = 0) -> list[dict]:
    """Sentences where two words are always people and 'park/market election' always a place: learnable fast."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words, tags = [], []
        for _ in range(rng.randint(4, 8)):
            draw = rng.random()
            if draw < 0.15:
                words, tags = words + [rng.choice(PEOPLE)], tags + ["B-PER"]
            elif draw < 0.3:
                words, tags = words + [rng.choice(PLACES), "election"], tags + ["B-LOC", "I-LOC"]
            else:
                words, tags = words + [rng.choice(FILLER)], tags + ["O"]
        rows.append({"tokens": words, "tags": tags})
    return rows


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def ner_config(tmp_path, model, train_file, **sections) -> dict:
    raw = {
        "task": "token-classification",
        "model": {"name": str(model)},
        "data": {"train_file": train_file, "validation_ratio": 0.2, "test_ratio": 0.1, "max_length": 32},
        "method": {"name": "full"},
        "train": {
            "batch_size": 8,
            "epochs": 4,
            "learning_rate": 5e-3,
            "precision": "fp32",
            "logging_steps": 5,
            "warmup": 0,
        },
        "eval": {"batch_size": 16},
        "output": {"dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ({"tokens": ["the", "cat"], "tags": ["O"]}, "2 words but 1 tags; give exactly one tag per word"),
        ({"tokens": ["the", "cat"], "tags": ["O", "PER"]}, "tag 'PER' of word 2 is not O, B-TYPE or I-TYPE"),
        ({"tokens": ["the", "cat"], "tags": ["O", "I-PER"]}, "word 2: I-PER does not continue an entity"),
        ({"tokens": ["the", "cat"], "tags": ["O", "B-ORG"]}, "tag B-ORG is not in the label set"),
        ({"text": "a cat", "entities": [{"start": 2, "end": 9, "label": "PER"}]}, "lies outside the text"),
        (
            {
                "text": "a big cat",
                "entities": [{"start": 0, "end": 5, "label": "PER"}, {"start": 2, "end": 9, "label": "PER"}],
            },
            "overlaps another entity (0-5)",
        ),
        (
            {"text": "a cat", "entities": [{"start": 2, "end": 4, "label": "PER"}]},
            "does not start and end on word boundaries",
        ),
        ({"words": ["x"]}, "found keys: words"),
    ],
)
def test_every_bad_row_is_named_by_file_line_with_the_fix(tmp_path, row, says):
    good = [
        {"tokens": ["the", "cat"], "tags": ["O", "B-PER"]},
        {"tokens": ["a", "park"], "tags": ["O", "B-LOC"]},
    ]
    train = write_rows(tmp_path / "train.jsonl", [*good, row])
    raw = {"task": "token-classification", "model": {"name": "m"}, "data": {"train_file": train}}
    cfg = config_from_dict(raw | {"token_classification": {"types": ["PER", "LOC"]}})
    checked = check_tagged(
        cfg.data.model_copy(update={"on_error": "skip"}), cfg.section("token_classification")
    )
    assert len(checked.problems) == 1
    assert checked.problems[0].startswith(f"{train}:3: ")
    assert says in checked.problems[0]
    assert len(checked.train) + len(checked.validation) == 2  # the good rows are kept, the bad one named


def test_iob1_files_are_read_into_iob2_and_iob2_entities_must_start_with_b():
    tags, problem, rewritten = tag_problem(["I-PER", "I-PER", "O", "I-LOC", "B-LOC"], "iob1")
    assert (tags, problem, rewritten) == (["B-PER", "I-PER", "O", "B-LOC", "B-LOC"], None, 2)
    _, problem, _ = tag_problem(["I-PER"], "iob2")
    assert "IOB2 starts every entity with B-PER" in problem


def test_conll_columns_are_read_sentence_by_sentence_with_their_first_line(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("-DOCSTART- -X- O\n\nthe DT O\ncat NN B-PER\n\npark NN B-LOC\nelection NN I-LOC\n")
    cfg = config_from_dict(
        {
            "task": "token-classification",
            "model": {"name": "m"},
            "data": {"train_file": str(path), "validation_ratio": 0},
        }
    )
    checked = check_tagged(cfg.data, cfg.section("token_classification"))
    assert [(e.where, e.words, e.tags) for e in checked.train] == [
        (f"{path}:3", ("the", "cat"), ("O", "B-PER")),
        (f"{path}:6", ("park", "election"), ("B-LOC", "I-LOC")),
    ]


def test_character_spans_become_word_tags_and_predicted_tags_become_the_same_spans():
    text = "Ada Lovelace met Babbage in London."
    entities = [{"start": 0, "end": 12, "label": "PER"}, {"start": 28, "end": 34, "label": "LOC"}]
    example, problem = from_spans(text, entities, "x:1")
    assert problem is None
    assert example.tags == ("B-PER", "I-PER", "O", "O", "O", "B-LOC", "O")
    found = spans(example, list(example.tags))
    assert [(e["start"], e["end"], e["label"], e["text"]) for e in found] == [
        (0, 12, "PER", "Ada Lovelace"),
        (28, 34, "LOC", "London"),
    ]


def test_a_words_tag_sits_on_its_first_sub_token_and_the_others_are_ignored():
    tag_ids = {"O": 0, "B-PER": 1, "I-PER": 2}
    # word 0 -> one sub-token, word 1 -> three, word 2 -> one; None: [CLS]/[SEP]
    word_ids = [None, 0, 1, 1, 1, 2, None]
    tags = ("O", "B-PER", "I-PER")
    assert labels_for(word_ids, tags, tag_ids, label_all=False) == [-100, 0, 1, -100, -100, 2, -100]
    assert labels_for(word_ids, tags, tag_ids, label_all=True) == [-100, 0, 1, 2, 2, 2, -100]
    # predictions are read back from the first sub-token; a word past max_length is O
    names = ["O", "B-PER", "I-PER"]
    assert word_predictions([[0, 0, 1, 0, 0]], [[None, 0, 1, 1, 1]], [3], names) == [["O", "B-PER", "O"]]


def test_words_past_max_length_are_counted(tiny_bert):
    from transformers import AutoTokenizer

    from tunesmith.tasks.token_classification.data import TaggedExample

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    example = TaggedExample("x:1", tuple(["cat"] * 10), tuple(["B-PER"] * 10))
    encoded = encode(tokenizer, [example], {"O": 0, "B-PER": 1, "I-PER": 2}, max_length=6, label_all=False)
    assert len(encoded.rows[0]["input_ids"]) == 6  # [CLS] + 4 words + [SEP]
    assert encoded.report["words_unseen"] == 6 and encoded.report["examples_cut"] == 1


def test_the_tasks_own_config_section_is_checked_overridden_and_written_back(tmp_path, tiny_bert):
    train = write_rows(tmp_path / "train.jsonl", tagged_rows(10))
    raw = ner_config(tmp_path, tiny_bert, train, token_classification={"tag_field": "labels"})
    with pytest.raises(TunesmithError) as caught:
        config_from_dict(raw)
    assert "token_classification.tag_field: unknown key; did you mean 'tags_field'?" in str(
        caught.value.details
    )
    raw["token_classification"] = {"tags_field": "labels"}
    cfg = config_from_dict(raw, overrides=["token_classification.scheme=iob1"])
    assert cfg.section("token_classification").tags_field == "labels"
    assert cfg.section("token_classification").scheme == "iob1"
    dump_config(cfg, tmp_path / "again.yaml")
    again = load_config(tmp_path / "again.yaml")
    assert again.section("token_classification") == cfg.section("token_classification")
    assert config_from_dict(ner_config(tmp_path, tiny_bert, train)).section("token_classification") == (
        TokenClassificationConfig()
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_tagger_trains_scores_its_test_split_once_and_tags_new_text(tmp_path, tiny_bert, method):
    train = write_rows(tmp_path / "train.jsonl", tagged_rows(200))
    settings = {"learning_rate": 1e-2} if method == "lora" else {}
    raw = ner_config(tmp_path, tiny_bert, train, method={"name": method}, train=settings)
    summary = api.train(config_from_dict(raw))
    assert summary["status"] == "finished"
    assert summary["test_before"]["f1"] < 0.5 and summary["test"]["f1"] >= 0.95
    assert summary["validation"]["f1"] >= 0.95 and set(summary["test"]["per_type"]) == {"LOC", "PER"}
    assert summary["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    page = (Path(summary["run_dir"]) / "report.html").read_text()  # its section: the package's report.html.j2
    test_table = re.search(r'id="per-type-test">.*?</table>', page, re.S).group(0)
    assert 'id="per-type-validation"' in page and test_table.count("<tr>") == 1 + 2  # the header, LOC, PER

    result = api.evaluate(summary["run_dir"], baseline=True)
    assert result["split"] == "test" and result["tuned"]["f1"] == summary["test"]["f1"]
    assert result["baseline"]["f1"] < result["tuned"]["f1"] - 0.4

    source = tmp_path / "new.jsonl"
    source.write_text(json.dumps({"text": "the dogs ran to the market election."}) + "\n")
    written = api.predict(summary["run_dir"], source, tmp_path / "tagged.jsonl")
    record = json.loads((tmp_path / "tagged.jsonl").read_text())
    assert written["rows"] == 1
    assert [(e["start"], e["end"], e["label"], e["text"]) for e in record["entities"]] == [
        (4, 8, "PER", "dogs"),
        (20, 35, "LOC", "market election"),
    ]


def test_an_exported_tagger_matches_the_run_and_the_server_returns_character_spans(tmp_path, tiny_bert):
    from fastapi.testclient import TestClient

    train = write_rows(tmp_path / "train.jsonl", tagged_rows(200))
    summary = api.train(config_from_dict(ner_config(tmp_path, tiny_bert, train)))
    exported = api.export(summary["run_dir"], "safetensors")
    assert exported["parity"]["max_abs_logit_difference"] <= exported["parity"]["tolerance"]

    client = TestClient(api.serve_app([summary["run_dir"]]))
    answer = client.post("/v1/entities", json={"model": "run", "input": ["a cat sat on the park election"]})
    assert answer.status_code == 200
    assert [(e["start"], e["end"], e["label"]) for e in answer.json()["data"][0]["entities"]] == [
        (2, 5, "PER"),
        (17, 30, "LOC"),
    ]
    empty = client.post("/v1/entities", json={"model": "run", "input": ["a cat", " "]})
    assert empty.status_code == 400 and empty.json()["error"]["message"] == "input[1] is empty"
