"""Tagged words: read from tables of words and tags, tables of text with character spans, or CoNLL column files;
every row checked and named by file:line."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import DataConfig
from tunesmith.data.prepare import CheckedData, three_splits
from tunesmith.data.readers import ENCODING, read_rows
from tunesmith.errors import TunesmithError
from tunesmith.tasks.token_classification.settings import TokenClassificationConfig

CONLL_SUFFIXES = {".conll", ".iob", ".bio", ".txt"}  # not .conllu: its word is column 2 and it has no NER tag
# Words of a text: runs of letters and digits (joined by inner hyphens or apostrophes), or one other character.
WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")


@dataclass(frozen=True)
class TaggedExample:
    where: str
    words: tuple[str, ...]
    tags: tuple[str, ...]  # IOB2, one per word; () for an input to tag
    text: str | None = None  # rows of text: the text itself
    offsets: tuple[tuple[int, int], ...] | None = None  # rows of text: each word's [start, end) in text
    rewritten: int = 0  # scheme iob1: entity starts read from I- into B- (counted in the data report)

    @property
    def key(self) -> tuple:
        return (self.words,)

    def token_count(self, renderer) -> int:
        """Sub-tokens the model sees for the words (with its special tokens), before max_length."""
        words = list(self.words)
        return len(renderer.tokenizer(words, is_split_into_words=True, truncation=False)["input_ids"])


def split_words(text: str) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    matches = list(WORD.finditer(text))
    return tuple(m.group() for m in matches), tuple(m.span() for m in matches)


def tag_problem(tags: list[str], scheme: str) -> tuple[list[str], str | None, int]:
    """The tags in IOB2 (iob1 read into it), the first problem, and how many entity starts were rewritten."""
    result, rewritten = [], 0
    for position, tag in enumerate(tags):
        if not isinstance(tag, str) or not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
            return [], f"tag {tag!r} of word {position + 1} is not O, B-TYPE or I-TYPE", 0
        previous = result[-1] if result else "O"
        continues = tag.startswith("I-") and previous != "O" and previous[2:] == tag[2:]
        if tag.startswith("I-") and not continues:
            if scheme == "iob2":
                return (
                    [],
                    f"word {position + 1}: {tag} does not continue an entity (the word before is "
                    f"{previous}); IOB2 starts every entity with B-{tag[2:]} (set token_classification.scheme: "
                    "iob1 for CoNLL-2003-style files)",
                    0,
                )
            tag, rewritten = "B-" + tag[2:], rewritten + 1
        result.append(tag)
    return result, None, rewritten


def from_spans(text: str, entities, where: str) -> tuple[TaggedExample | None, str | None]:
    """A text and its {start, end, label} spans as words and IOB2 tags; a span must cover whole words."""
    words, offsets = split_words(text)
    if not isinstance(entities, list):
        return None, "entities must be a list of {start, end, label}"
    tags = ["O"] * len(words)
    starts = {start: i for i, (start, _) in enumerate(offsets)}
    ends = {end: i for i, (_, end) in enumerate(offsets)}
    taken: list[tuple[int, int]] = []
    for number, span in enumerate(entities, start=1):
        if not isinstance(span, dict) or not {"start", "end", "label"} <= set(span):
            return None, f"entity {number} needs start, end and label"
        start, end, label = span["start"], span["end"], span["label"]
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(label, str) and label):
            return None, f"entity {number}: start and end must be integers and label a non-empty text"
        if not 0 <= start < end <= len(text):
            return None, f"entity {number} ({start}-{end}) lies outside the text (length {len(text)})"
        clash = next(((a, b) for a, b in taken if start < b and a < end), None)
        if clash:
            return None, f"entity {number} ({start}-{end}) overlaps another entity ({clash[0]}-{clash[1]})"
        if start not in starts or end not in ends:
            return None, (
                f"entity {number} ({start}-{end}, {text[start:end]!r}) does not start and end on word "
                "boundaries; widen it to whole words"
            )
        taken.append((start, end))
        first, last = starts[start], ends[end]
        tags[first] = f"B-{label}"
        for i in range(first + 1, last + 1):
            tags[i] = f"I-{label}"
    return TaggedExample(where, words, tuple(tags), text, offsets), None


def from_row(data: dict, where: str, settings: TokenClassificationConfig, labelled: bool):
    """One table row as a TaggedExample (words + tags, or text + spans), or the problem with it."""
    s = settings
    if s.tokens_field in data:
        words = data[s.tokens_field]
        if isinstance(words, str):  # a CSV cell: words separated by spaces
            words = words.split()
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
            return None, f"'{s.tokens_field}' must be a non-empty list of non-empty words"
        if not labelled:
            return TaggedExample(where, tuple(words), ()), None
        tags = data.get(s.tags_field)
        tags = tags.split() if isinstance(tags, str) else tags
        if not isinstance(tags, list):
            return None, f"'{s.tags_field}' is missing: give one tag per word (O, B-TYPE, I-TYPE)"
        if len(tags) != len(words):
            return None, f"{len(words)} words but {len(tags)} tags; give exactly one tag per word"
        tags, problem, rewritten = tag_problem(tags, s.scheme)
        return (
            (None, problem)
            if problem
            else (TaggedExample(where, tuple(words), tuple(tags), None, None, rewritten), None)
        )
    if s.text_field in data:
        text = data[s.text_field]
        if not isinstance(text, str) or not text.strip():
            return None, f"'{s.text_field}' must be a non-empty text"
        if not labelled:
            words, offsets = split_words(text)
            return TaggedExample(where, words, (), text, offsets), None
        if s.entities_field not in data:
            return None, f"'{s.entities_field}' is missing: give the text's entities as {{start, end, label}}"
        return from_spans(text, data[s.entities_field], where)
    found = ", ".join(sorted(map(str, data))) or "none"
    return None, (
        f"no '{s.tokens_field}' + '{s.tags_field}' (words and their tags) and no '{s.text_field}' + "
        f"'{s.entities_field}' (text and character spans); found keys: {found}. Set "
        "token_classification.tokens_field / tags_field / text_field / entities_field to your column names"
    )


def read_conll(path: Path, settings: TokenClassificationConfig, labelled: bool):
    """CoNLL columns: one word per line (the word first, its tag last), a blank line between sentences."""
    examples, problems = [], []
    sentence: list[tuple[int, list[str]]] = []

    def close() -> None:
        if not sentence:
            return
        where = f"{path}:{sentence[0][0]}"
        bad = next((line for line, columns in sentence if len(columns) < (2 if labelled else 1)), None)
        if bad is not None:
            problems.append(f"{path}:{bad}: expected a word and its tag separated by white space")
        else:
            words = tuple(columns[0] for _, columns in sentence)
            if not labelled:
                examples.append(TaggedExample(where, words, ()))
            else:
                tags, problem, rewritten = tag_problem(
                    [columns[-1] for _, columns in sentence], settings.scheme
                )
                if problem:
                    problems.append(f"{where}: {problem}")
                else:
                    examples.append(TaggedExample(where, words, tuple(tags), None, None, rewritten))
        sentence.clear()

    with path.open(**ENCODING) as handle:
        for number, line in enumerate(handle, start=1):
            columns = line.split()
            if not columns or columns[0] == "-DOCSTART-":
                close()
            else:
                sentence.append((number, columns))
    close()
    return examples, problems


def read_tagged(source: str, data: DataConfig, settings: TokenClassificationConfig, labelled: bool = True):
    """Every row of one file as TaggedExamples, and a file:line problem for each bad one."""
    path = Path(source)
    if path.suffix.lower() in CONLL_SUFFIXES and path.is_file():
        return read_conll(path, settings, labelled)
    examples, problems = [], []
    for row in read_rows(path):
        if row.error:
            problems.append(f"{row.where}: {row.error}")
            continue
        example, problem = from_row(row.data, row.where, settings, labelled)
        if problem:
            problems.append(f"{row.where}: {problem}")
        else:
            examples.append(example)
    if data.max_examples:
        examples = examples[: data.max_examples]
    return examples, problems


def seeded_split(examples: list, ratio: float, seed: int) -> tuple[list, list]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = max(1, round(len(examples) * ratio)) if ratio > 0 and len(examples) > 1 else 0
    chosen = set(order[:held])
    return (
        [e for i, e in enumerate(examples) if i not in chosen],
        [e for i, e in enumerate(examples) if i in chosen],
    )


def entity_counts(examples: list[TaggedExample]) -> dict[str, int]:
    return dict(sorted(Counter(t[2:] for e in examples for t in e.tags if t.startswith("B-")).items()))


def check_tagged(data: DataConfig, settings: TokenClassificationConfig) -> CheckedData:
    """Read, check and split; the tag set (O, then B-/I- of each type) goes in report['labels']."""
    splits, problems = [], []
    for source in (data.train_file, data.validation_file, data.test_file):
        examples, more = read_tagged(source, data, settings) if source else ([], [])
        splits.append(examples)
        problems += more
    seen = sorted({t[2:] for e in splits[0] for t in e.tags if t != "O"})
    types = list(settings.types) if settings.types else seen
    where_types = "token_classification.types" if settings.types else "the training data"
    for index, split in enumerate(splits):
        kept = []
        for example in split:
            unknown = next((t for t in example.tags if t != "O" and t[2:] not in types), None)
            if unknown:
                problems.append(
                    f"{example.where}: tag {unknown} is not in the label set (types from {where_types}: "
                    f"{', '.join(types) or 'none'}); fix the tag or add its type to token_classification.types"
                )
            else:
                kept.append(example)
        splits[index] = kept
    if not types and not problems:
        raise TunesmithError(
            f"{data.train_file}: no entity tags found (every word is O); token classification needs tagged "
            f"entities (field '{settings.tags_field}', or '{settings.entities_field}' spans)"
        )
    report = {
        "train_file": data.train_file,
        "validation_file": data.validation_file,
        "rows_read": sum(map(len, splits)) + len(problems),
        "bad_rows": len(problems),
        "bad_row_list": problems[:200],
        "on_error": data.on_error,
        "types": types,
        "labels": ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")],
        "scheme": settings.scheme,
        "iob1_starts_rewritten": sum(e.rewritten for split in splits for e in split),
    }
    if problems and data.on_error == "stop":
        return CheckedData([], [], report, problems)
    held_out = f"{data.validation_ratio:g} of {data.train_file} held out (seed {data.seed})"
    train, validation, test = three_splits(*splits, data, report, seeded_split, held_out)
    report["entities"] = {
        name: entity_counts(split)
        for name, split in (("train", train), ("validation", validation), ("test", test))
        if split
    }
    return CheckedData(train, validation, report, problems, test)
