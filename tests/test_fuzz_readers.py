"""Property-based fuzz of every reader: corrupted JSONL, JSON, CSV and Parquet files never crash tunesmith.

For any generated file, with random bytes flipped, inserted or cut, tunesmith either refuses the whole file with
a TunesmithError (one line, no traceback) or accounts for every row it read: each one is used (train or
validation) or reported (a bad row, a duplicate), exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from itertools import count

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tunesmith.config import DataConfig
from tunesmith.data.labelled import LabelSettings, check_labelled, read_labelled
from tunesmith.data.prepare import check_data
from tunesmith.data.readers import read_rows
from tunesmith.data.validate import validate_rows
from tunesmith.errors import TunesmithError

FIELDS = ["prompt", "response", "text", "label"]
WORDS = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
VALUES = st.one_of(
    WORDS,
    st.sampled_from(["sport", "news", "", " ", "a,b", 'say "hi"', "two\nlines", "ü€😀"]),
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(WORDS, max_size=2),
)
MISSING = object()
# Mostly valid rows (short words from a small alphabet, so duplicates happen), some fields broken or removed.
SOME_TEXT = st.one_of(st.text(alphabet="ab ", min_size=1, max_size=3), WORDS.filter(str.strip))
GOOD = st.fixed_dictionaries(
    {"prompt": SOME_TEXT, "response": SOME_TEXT, "text": SOME_TEXT, "label": st.sampled_from(["x", "y", "z"])}
)
DAMAGE = st.dictionaries(st.sampled_from([*FIELDS, "extra"]), st.one_of(st.just(MISSING), VALUES), max_size=2)
ROW = st.builds(
    lambda good, damage: {k: v for k, v in {**good, **damage}.items() if v is not MISSING},
    GOOD,
    st.one_of(st.just({}), DAMAGE),
)
ROWS = st.lists(ROW, max_size=12)
# (what, where in the file as a fraction, a byte): applied in order to the file's bytes
CORRUPTION = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "cut", "bom", "latin1", "newline", "quote"]),
        st.floats(0, 1),
        st.integers(0, 255),
    ),
    max_size=4,
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NAMES = count()


def corrupt(data: bytes, operations) -> bytes:
    for what, where, byte in operations:
        at = min(len(data), int(where * len(data)))
        if what == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ (byte or 1)]) + data[at + 1 :]
        elif what == "insert":
            data = data[:at] + bytes([byte]) + data[at:]
        elif what == "delete":
            data = data[:at] + data[at + 1 :]
        elif what == "cut":
            data = data[:at]
        elif what == "bom":
            data = b"\xef\xbb\xbf" + data
        elif what == "latin1":
            data = data[:at] + "é".encode("latin-1") + data[at:]
        elif what == "newline":
            data = data[:at] + b"\r\n" + data[at:]
        else:
            data = data[:at] + b'"' + data[at:]
    return data


def as_cell(value) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def serialize(rows: list[dict], suffix: str, style: int) -> bytes:
    if suffix == ".jsonl":
        newline = "\r\n" if style % 2 else "\n"
        return "".join(json.dumps(row, ensure_ascii=style % 3 == 0) + newline for row in rows).encode()
    if suffix == ".json":
        return json.dumps(rows, indent=style % 3 or None, ensure_ascii=style % 2 == 0).encode()
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: as_cell(v) for k, v in row.items()} for row in rows)
        return buffer.getvalue().encode()
    columns = {name: [as_cell(row[name]) if name in row else None for row in rows] for name in FIELDS}
    sink = io.BytesIO()
    pq.write_table(pa.table(columns, schema=pa.schema([(n, pa.string()) for n in FIELDS])), sink)
    return sink.getvalue()


def where(line: str) -> str:
    """'file:line' of a problem or duplicate line ('file:line: reason'); file names here hold no ': '."""
    return line.split(": ", 1)[0]


def assert_every_row_accounted_for(path, checked) -> None:
    rows = read_rows(path)
    report = checked.report
    assert report["rows_read"] == len(rows)
    assert report["bad_rows"] == len(checked.problems)
    if checked.problems and report["on_error"] == "stop":  # nothing is used: the run refuses, listing them
        assert checked.train == [] and checked.validation == []
        assert Counter(where(p) for p in checked.problems) <= Counter(row.where for row in rows)
        return
    used = [e.where for e in checked.train + checked.validation + checked.test]
    reported = [where(p) for p in checked.problems] + [where(d) for d in report.get("duplicate_list", [])]
    assert Counter(used + reported) == Counter(row.where for row in rows)
    assert len(used) == report["train_examples"] + report["validation_examples"] + len(checked.test)
    assert report["validation_overlap_removed"] == 0  # deduplicated before the split: none can leak


def good_examples(path, cfg: DataConfig, labelled: bool) -> list:
    """The rows that pass validation one by one, before any set-level step (deduplication, split)."""
    if labelled:
        return read_labelled(str(path), cfg, LabelSettings(), "text")[0]
    return validate_rows(read_rows(path), cfg, cfg.format)[0]


def run_case(tmp_path, rows, suffix, style, operations, on_error, labelled: bool) -> None:
    path = tmp_path / f"fuzz-{next(NAMES)}{suffix}"
    path.write_bytes(corrupt(serialize(rows, suffix, style), operations))
    ratio = random.Random(style).choice([0.0, 0.25])
    try:
        if labelled:
            cfg = DataConfig(train_file=str(path), on_error=on_error, validation_ratio=ratio)
            checked = check_labelled(cfg, LabelSettings(), "text")
        else:
            cfg = DataConfig(
                train_file=str(path), on_error=on_error, validation_ratio=ratio, format="prompt_response"
            )
            checked = check_data(cfg)
    except TunesmithError as exc:
        event(f"refused: {str(exc).split(': ', 1)[-1][:40]}")
        assert str(exc).strip()  # the whole file refused, with a message the CLI prints without a traceback
        if "no valid training examples left" in str(exc):  # then no row may have been valid
            assert good_examples(path, cfg, labelled) == []
        return
    event(f"accounted: {len(checked.train) + len(checked.validation)} used, {len(checked.problems)} bad")
    assert_every_row_accounted_for(path, checked)


@FUZZ
@given(
    rows=ROWS,
    suffix=st.sampled_from([".jsonl", ".json", ".csv"]),
    style=st.integers(0, 5),
    operations=CORRUPTION,
    on_error=st.sampled_from(["skip", "stop"]),
)
def test_text_readers_never_crash_and_account_for_every_row(
    tmp_path, rows, suffix, style, operations, on_error
):
    run_case(tmp_path, rows, suffix, style, operations, on_error, labelled=False)


@FUZZ
@given(
    rows=ROWS,
    suffix=st.sampled_from([".jsonl", ".json", ".csv"]),
    style=st.integers(0, 5),
    operations=CORRUPTION,
)
# Found by this fuzz: a JSON array on one line gives every row the same file:line, and one bad row dropped
# all of its neighbours (then "no valid training examples left").
@example(
    rows=[{"text": "a", "label": "x"}, {"text": None, "label": "y"}, {"text": "b", "label": "y"}],
    suffix=".json",
    style=0,
    operations=[],
)
def test_labelled_readers_never_crash_and_account_for_every_row(tmp_path, rows, suffix, style, operations):
    run_case(tmp_path, rows, suffix, style, operations, "skip", labelled=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, operations=CORRUPTION, labelled=st.booleans())
def test_parquet_reader_never_crashes_and_accounts_for_every_row(tmp_path, rows, operations, labelled):
    run_case(tmp_path, rows, ".parquet", 0, operations, "skip", labelled)
