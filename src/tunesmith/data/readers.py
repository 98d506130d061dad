"""Read JSON, JSONL, CSV, Parquet files and saved `datasets` folders into rows that remember where they came from."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError


@dataclass
class Row:
    source: str
    line: int  # 1-based line in the file (JSON/JSONL/CSV) or row number (Parquet, datasets)
    data: dict[str, Any] | None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def read_rows(path: str | Path) -> list[Row]:
    path = Path(path)
    if not path.exists():
        raise TunesmithError(f"{path}: data file not found; check data.train_file / data.validation_file")
    if path.is_dir():
        return _read_datasets_folder(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise TunesmithError(
            f"{path}: unsupported file type '{path.suffix}'; use .jsonl, .json, .csv, .parquet or a saved datasets folder"
        )
    return reader(path)


# "utf-8-sig" drops the byte-order mark spreadsheet tools on Windows write; "surrogateescape" keeps each
# undecodable byte as a lone surrogate, so the row holding it is reported instead of silently altered.
ENCODING = {"encoding": "utf-8-sig", "errors": "surrogateescape"}


def undecodable(text: str) -> str | None:
    """The problem with a line holding bytes that are not UTF-8, or None."""
    for column, char in enumerate(text, start=1):
        if "\udc80" <= char <= "\udcff":
            return (
                f"invalid UTF-8 (byte 0x{ord(char) - 0xDC00:02x} at column {column}); "
                "re-save the file as UTF-8"
            )
    return None


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open(**ENCODING) as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            problem = undecodable(text)
            if problem:
                rows.append(Row(str(path), number, None, problem))
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                rows.append(Row(str(path), number, None, f"invalid JSON ({exc.msg} at column {exc.colno})"))
                continue
            except (ValueError, RecursionError) as exc:
                rows.append(Row(str(path), number, None, _unholdable(exc)))
                continue
            if not isinstance(value, dict):
                rows.append(
                    Row(str(path), number, None, f"expected a JSON object, got {type(value).__name__}")
                )
                continue
            rows.append(Row(str(path), number, value))
    return rows


def _unholdable(exc: Exception) -> str:
    """Valid JSON that Python's decoder refuses: an integer over its digit limit, or nesting past recursion."""
    what = "nested too deeply" if isinstance(exc, RecursionError) else "holds a number too long to read"
    return f"JSON value {what}; shorten it"


def _read_json(path: Path) -> list[Row]:
    text = path.read_text(**ENCODING)
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] != "[":
        # A single object per line is JSONL even with a .json suffix.
        return _read_jsonl(path)
    rows, index = [], start + 1
    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text) or text[index] == "]":
            break
        line = text.count("\n", 0, index) + 1
        start_of_value = index
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as exc:
            # One broken element makes the rest of the array unreadable: report it, stop there.
            rows.append(
                Row(
                    str(path),
                    exc.lineno,
                    None,
                    f"invalid JSON ({exc.msg}); the rest of the file was not read",
                )
            )
            break
        except (ValueError, RecursionError) as exc:
            rows.append(Row(str(path), line, None, f"{_unholdable(exc)}; the rest of the file was not read"))
            break
        problem = undecodable(text[start_of_value:index])
        if problem:
            rows.append(Row(str(path), line, None, problem))
        elif isinstance(value, dict):
            rows.append(Row(str(path), line, value))
        else:
            rows.append(Row(str(path), line, None, f"expected a JSON object, got {type(value).__name__}"))
    return rows


def _read_csv(path: Path) -> list[Row]:
    rows = []
    with path.open(newline="", **ENCODING) as handle:
        reader = csv.DictReader(handle)
        header_problem = undecodable(",".join(reader.fieldnames or []))
        if header_problem:
            raise TunesmithError(f"{path}:1: the header has {header_problem}")
        line = 1
        for record in reader:
            start, line = line + 1, reader.line_num
            if None in record:
                rows.append(
                    Row(str(path), start, None, "more values than header columns (an unquoted comma?)")
                )
                continue
            problem = undecodable("".join(value or "" for value in record.values()))
            if problem:
                rows.append(Row(str(path), start, None, problem))
                continue
            # A short row leaves its last columns None: missing. An empty cell stays "": empty, said so.
            rows.append(Row(str(path), start, {k: v for k, v in record.items() if v is not None}))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise TunesmithError(f"{path}: cannot read Parquet ({exc}); re-export the file") from None
    return [Row(str(path), number, record) for number, record in enumerate(records, start=1)]


def _read_datasets_folder(path: Path) -> list[Row]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or its own errors
        raise TunesmithError(
            f"{path}: not a saved `datasets` folder ({exc}); point at a file or a save_to_disk folder"
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise TunesmithError(
                f"{path}: DatasetDict without a 'train' split (has {list(dataset)}); save one split"
            )
        dataset = dataset["train"]
    return [Row(str(path), number, dict(record)) for number, record in enumerate(dataset, start=1)]


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
