"""Labelled examples for classification: tables of text or file paths, or one folder per class; every row checked."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from tunesmith.config import DataConfig, Section
from tunesmith.data.media import (
    AUDIO_SUFFIXES,
    IMAGE_SUFFIXES,
    TEXT_SUFFIXES,
    audio_problem,
    image_problem,
)
from tunesmith.data.prepare import CheckedData, three_splits
from tunesmith.data.readers import Row, read_rows
from tunesmith.errors import TunesmithError

SUFFIXES = {"text": TEXT_SUFFIXES, "image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}


class LabelSettings(Section):
    """How a labelled table is read: the keys of the `classification:` section that say where the label (and the
    text pair or file) is and what a label cell holds. The section itself (tasks/classification/settings.py) adds
    how inputs are prepared; these live here because the forgetting probe reads labelled reference sets for any
    encoder task with them."""

    label_field: str = Field("label", description="tables: the label column")
    text_pair_field: str | None = Field(
        None, description="text: a second text column for pair tasks (e.g. NLI: premise and hypothesis)"
    )
    file_field: str = Field(
        "path", description="image/audio tables: the file path column (relative to the table)"
    )
    labels: list[str] | None = Field(None, description="the label set and its order; default: those in train")
    multi_label: bool = Field(
        False, description="text: several labels per row (a list, or joined text in CSV)"
    )
    label_separator: str = Field("|", description="multi-label CSV cells: labels joined by this")


@dataclass(frozen=True)
class LabelledExample:
    where: str
    labels: tuple[str, ...]
    text: str | None = None
    text_pair: str | None = None
    path: str | None = None  # an image or audio file

    @property
    def key(self) -> tuple:
        return (self.text, self.text_pair, self.path)


def natural_order(labels) -> list[str]:
    """'2' before '10', then names alphabetically: the order id2label numbers them in."""
    return sorted(labels, key=lambda label: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", label)])


def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # older corpora (BBC News among them) are Latin-1


def read_class_folders(root: Path, modality: str) -> tuple[list[LabelledExample], list[str]]:
    """root/<label>/<file>: every file below a class folder is one example; other files are reported."""
    examples, problems = [], []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise TunesmithError(
            f"{root}: a class-folder data set needs one sub-folder per label (e.g. {root}/cat/1.png)"
        )
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() not in SUFFIXES[modality]:
                problems.append(
                    f"{path}: not a {modality} file ({', '.join(sorted(SUFFIXES[modality]))}); move it out of the class folder"
                )
                continue
            if modality == "text":
                text = _read_text_file(path).strip()
                if not text:
                    problems.append(f"{path}: empty text; remove the file")
                    continue
                examples.append(LabelledExample(str(path), (folder.name,), text=text))
            else:
                examples.append(LabelledExample(str(path), (folder.name,), path=str(path)))
    return examples, problems


def _labels_of(value, fields: LabelSettings) -> tuple[str, ...] | str:
    """The row's labels, or a message saying what is wrong with them."""
    if value is None:
        return f"label field '{fields.label_field}' is null; give the row its label or remove it"
    if isinstance(value, str) and not value.strip():
        return f"label field '{fields.label_field}' is empty; give the row its label or remove it"
    if isinstance(value, bool):
        return f"label field '{fields.label_field}' must be a name or a number, got {value!r}"
    if fields.multi_label:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(fields.label_separator) if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
            return f"label field '{fields.label_field}' must be a list of labels (or '{fields.label_separator}'-joined text)"
        return tuple(dict.fromkeys(str(v) for v in value))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (str, int)) or not str(value).strip():
        return f"label field '{fields.label_field}' must be one label (a name or an integer), got {value!r}"
    return (str(value).strip(),)


def _example_from_row(
    row: Row, text_field: str, fields: LabelSettings, modality: str, labelled: bool = True
) -> LabelledExample | str:
    data = row.data
    present = ", ".join(sorted(data)) or "none"
    labels: tuple[str, ...] | str = ()
    if labelled:
        if fields.label_field not in data:
            return f"missing label field '{fields.label_field}' (fields present: {present}); set classification.label_field"
        labels = _labels_of(data[fields.label_field], fields)
        if isinstance(labels, str):
            return labels
    if modality == "text":
        text = data.get(text_field)
        if text_field not in data:
            return f"missing text field '{text_field}' (fields present: {present}); set data.text_field"
        if text is None:
            return f"text field '{text_field}' is null; fill it or remove the row"
        if not isinstance(text, str) or not text.strip():
            return f"empty text in field '{text_field}'; fill it or remove the row"
        pair = None
        if fields.text_pair_field:
            pair = data.get(fields.text_pair_field)
            if not isinstance(pair, str) or not pair.strip():
                return f"missing or empty text pair field '{fields.text_pair_field}'"
        return LabelledExample(row.where, labels, text=text, text_pair=pair)
    value = data.get(fields.file_field)
    if fields.file_field in data and (value is None or (isinstance(value, str) and not value.strip())):
        state = "null" if value is None else "empty"
        return f"file field '{fields.file_field}' is {state}; give the row its file or remove it"
    if not isinstance(value, str) or not value.strip():
        return f"missing file field '{fields.file_field}' (fields present: {present}); set classification.file_field"
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(row.source).parent / path  # paths in a table are relative to the table
    if not path.is_file():
        return f"file not found: {path}"
    return LabelledExample(row.where, labels, path=str(path))


def read_labelled(
    source: str, data: DataConfig, fields: LabelSettings, modality: str
) -> tuple[list[LabelledExample], list[str]]:
    path = Path(source)
    if (
        path.is_dir()
        and not (path / "dataset_info.json").exists()
        and not (path / "dataset_dict.json").exists()
    ):
        return read_class_folders(path, modality)
    examples, problems = [], []
    for row in read_rows(path):
        result = (
            f"{row.where}: {row.error}"
            if row.error
            else _example_from_row(row, data.text_field, fields, modality)
        )
        if isinstance(result, str):
            problems.append(result if row.error else f"{row.where}: {result}")
        else:
            examples.append(result)
    return examples, problems


def read_inputs(
    source: str, data: DataConfig, fields: LabelSettings, modality: str
) -> tuple[list[LabelledExample], list[str]]:
    """Prediction inputs, labels not needed: a table (the training config's fields) or a folder of files."""
    path = Path(source)
    if not path.exists():
        raise TunesmithError(f"{path}: input not found; pass a data file or a folder of files")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES[modality])
        if not files:
            raise TunesmithError(
                f"{path}: no {modality} files ({', '.join(sorted(SUFFIXES[modality]))}) in it"
            )
        if modality == "text":
            return [LabelledExample(str(p), (), text=_read_text_file(p).strip()) for p in files], []
        examples = [LabelledExample(str(p), (), path=str(p)) for p in files]
        return examples, unreadable_files(examples, modality)
    examples, problems = [], []
    for row in read_rows(path):
        result = (
            row.error
            if row.error
            else _example_from_row(row, data.text_field, fields, modality, labelled=False)
        )
        if isinstance(result, str):
            problems.append(f"{row.where}: {result}")
        else:
            examples.append(result)
    return examples, problems + unreadable_files(examples, modality)


def unreadable_files(examples: list[LabelledExample], modality: str) -> list[str]:
    """Open every image or audio file once, so a broken one is named before training, not mid-epoch."""
    return keep_good(examples, _file_check(modality))[1]


def _file_check(modality: str):
    check = {"image": image_problem, "audio": audio_problem}.get(modality)
    return (lambda example: check(Path(example.path))) if check else (lambda example: None)


def keep_good(examples: list[LabelledExample], problem_of) -> tuple[list[LabelledExample], list[str]]:
    """The examples `problem_of` finds nothing wrong with, and a 'file:line: problem' for each other one.

    Sorted by the example itself, not by its file:line: the rows of a one-line JSON array share one.
    """
    kept, problems = [], []
    for example in examples:
        problem = problem_of(example)
        if problem:
            problems.append(f"{example.where}: {problem}")
        else:
            kept.append(example)
    return kept, problems


def stratified_split(examples, ratio: float, seed: int):
    """Hold out `ratio` of each class (seeded), so validation has the training set's class balance."""
    by_label: dict[tuple, list] = {}
    for example in examples:
        by_label.setdefault(example.labels, []).append(example)
    rng = random.Random(seed)
    held_out: set[int] = set()
    for group in by_label.values():
        order = list(range(len(group)))
        rng.shuffle(order)
        count = round(len(group) * ratio) if len(group) > 1 else 0
        held_out.update(id(group[i]) for i in order[:count])
    train = [e for e in examples if id(e) not in held_out]
    validation = [e for e in examples if id(e) in held_out]
    rng.shuffle(train)
    return train, validation


def class_report(examples: list[LabelledExample], label_names: list[str]) -> dict:
    counts = Counter(label for example in examples for label in example.labels)
    ordered = {name: counts.get(name, 0) for name in label_names}
    present = [count for count in ordered.values() if count]
    return {
        "counts": ordered,
        "imbalance_ratio": round(max(present) / min(present), 2) if present else None,
        "missing_classes": [name for name, count in ordered.items() if not count],
    }


def check_labelled(data: DataConfig, fields: LabelSettings, modality: str) -> CheckedData:
    """Read, validate, deduplicate and split a classification data set of `modality` (text, image, audio);
    label names go in report['labels']."""
    train, problems = read_labelled(data.train_file, data, fields, modality)
    validation: list[LabelledExample] = []
    if data.validation_file:
        validation, more = read_labelled(data.validation_file, data, fields, modality)
        problems += more
    test: list[LabelledExample] = []
    if data.test_file:
        test, more = read_labelled(data.test_file, data, fields, modality)
        problems += more
    rows_read = len(train) + len(validation) + len(test) + len(problems)
    splits = [train, validation, test]
    for index, split in enumerate(splits):
        splits[index], broken = keep_good(split, _file_check(modality))
        problems += broken
    train, validation, test = splits

    seen = natural_order({label for example in train for label in example.labels})
    label_names = list(fields.labels) if fields.labels else seen
    known = set(label_names)

    def unknown_label(example: LabelledExample) -> str | None:
        unknown = [label for label in example.labels if label not in known]
        if not unknown:
            return None
        where = "classification.labels" if fields.labels else "the training data"
        return (
            f"unknown label {unknown[0]!r} (not in {where}: {', '.join(label_names)}); "
            "fix the label or add it to classification.labels"
        )

    for index, split in enumerate(splits):
        splits[index], unknown = keep_good(split, unknown_label)
        problems += unknown
    train, validation, test = splits
    report = {
        "modality": modality,
        "train_file": data.train_file,
        "validation_file": data.validation_file,
        "rows_read": rows_read,
        "bad_rows": len(problems),
        "bad_row_list": problems[:200],
        "on_error": data.on_error,
        "labels": label_names,
        "multi_label": fields.multi_label,
    }
    if problems and data.on_error == "stop":
        return CheckedData([], [], report, problems)
    held_out = f"{data.validation_ratio:g} of each class held out (seed {data.seed})"
    train, validation, test = three_splits(train, validation, test, data, report, stratified_split, held_out)
    if len(label_names) < 2 and not fields.multi_label:
        raise TunesmithError(
            f"{data.train_file}: found {len(label_names)} label(s) ({', '.join(label_names) or 'none'}); "
            f"classification needs at least 2 (label field '{fields.label_field}')"
        )
    report["train_classes"] = class_report(train, label_names)
    report["validation_classes"] = class_report(validation, label_names)
    if test:
        report["test_classes"] = class_report(test, label_names)
    return CheckedData(train, validation, report, problems, test)
