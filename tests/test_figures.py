"""Every figure README.md and docs/*.md quote from a results file is the figure in that file.

The convention (README.md, "Where the figures come from"): a quoted figure is a markdown link whose text is the
number as shown and whose target is the results file, with the value's place in it after `#`:

    [84.6](bench/results/recipes.json#rows.1.tokens_per_second)          rows[1]["tokens_per_second"]
    [84.6 tokens/s](bench/results/recipes.json#rows.label=tunesmith%20default.tokens_per_second)
    [56.1%](bench/results/recipes.json#rows.1.mfu*100)                    a fraction shown in percent
    [25.9 min](bench/results/recipes.json#meta.wall_seconds/60)           seconds shown in minutes
    [1.70x](bench/results/recipes.json#rows.1.tokens_per_second/rows.0.tokens_per_second)   a ratio

A table copied whole from a results table is announced by the line before it (a blank line may follow):

    Copied from [bench/results/classification.md](../bench/results/classification.md):

and every row of it must be a line of that file.

Path segments are dict keys, list indices, or `key=value` (the list item whose `key` is `value`, URL-encoded);
a trailing `*N` or `/N` scales the value, and `/other.path` divides it by another value of the file (a ratio). The value, rounded to the decimals shown, must equal the number shown
(thousands commas, a unit after the number and a Unicode minus are allowed).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).parents[1]
# [figure](path/to/bench/results/name.json#where): the link text must start with a number
QUOTE = re.compile(r"\[([^\]]*)\]\(([^)\s]*bench/results/[^)\s#]+\.json)#([^)\s]+)\)")
# the number, then optionally its unit ("%", "x", " tokens/s", " GB"): anything not continuing the number
NUMBER = re.compile(r"^([+\-\u2212]?)(\d[\d,]*)(?:\.(\d+))?(?:[^\d.,].*)?$")
# a trailing "*N", "/N" (a constant) or "/other.path" (another value of the same file: a ratio)
SCALE = re.compile(r"^([^*/]+)([*/])([^*/]+)$")


def resolve(document: object, where: str) -> object:
    """The value at `where` (dot-separated keys, list indices, or key=value selectors) in `document`."""
    value = document
    for segment in unquote(where).split("."):
        if isinstance(value, list) and "=" in segment:
            key, wanted = segment.split("=", 1)
            matches = [item for item in value if isinstance(item, dict) and str(item.get(key)) == wanted]
            if len(matches) != 1:
                raise KeyError(f"{segment}: {len(matches)} list items match")
            value = matches[0]
        elif isinstance(value, list):
            value = value[int(segment)]
        elif isinstance(value, dict) and segment in value:
            value = value[segment]
        else:
            raise KeyError(f"{segment}: not in the file")
    return value


def number_at(document: object, where: str) -> float:
    value = resolve(document, where)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"the file holds {value!r} at {where}, not a number")
    return value


def shown_number(text: str) -> tuple[float, int]:
    """The number a link shows and how many decimals it shows."""
    match = NUMBER.match(text.strip())
    if match is None:
        raise ValueError(f"[{text}] does not start with a number")
    sign, whole, decimals = match.groups()
    number = float(whole.replace(",", "") + ("." + decimals if decimals else ""))
    return (-number if sign in ("-", "\u2212") else number), len(decimals or "")


def check_figures(markdown: Path) -> tuple[int, list[str]]:
    """How many quoted figures `markdown` has, and a line per one that differs from its file (or cannot be read)."""
    problems, count = [], 0
    for number, line in enumerate(markdown.read_text(encoding="utf-8").splitlines(), start=1):
        for text, target, where in QUOTE.findall(line):
            count += 1
            place = f"{markdown.name}:{number}: [{text}]({target}#{where})"
            source = (markdown.parent / target).resolve()
            try:
                shown, decimals = shown_number(text)
                scaled = SCALE.match(where)
                path, operator, factor = scaled.groups() if scaled else (where, None, None)
                document = json.loads(source.read_text(encoding="utf-8"))
                value = number_at(document, path)
                if operator:
                    by = (
                        float(factor) if re.fullmatch(r"\d+(\.\d+)?", factor) else number_at(document, factor)
                    )
                    value = value * by if operator == "*" else value / by
            except (OSError, KeyError, IndexError, ValueError, json.JSONDecodeError) as error:
                problems.append(f"{place}: {error}")
                continue
            # Half away from zero, as people round, or as Python's format() printed it (to even on exact halves).
            rounded = math.copysign(math.floor(abs(value) * 10**decimals + 0.5) / 10**decimals, value)
            printed = float(f"{value:.{decimals}f}")
            if not any(math.isclose(shown, r, abs_tol=10 ** -(decimals + 6)) for r in (rounded, printed)):
                problems.append(f"{place}: the file holds {value!r}, which shows as {rounded:.{decimals}f}")
    return count, problems


COPIED = re.compile(r"^Copied from \[[^\]]*\]\(([^)\s]*bench/results/[^)\s]+\.md)\):\s*$")


def check_copied_tables(markdown: Path) -> tuple[int, list[str]]:
    """How many tables `markdown` says it copied from a results file, and a line per row that file lacks."""
    problems, count = [], 0
    lines = markdown.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        match = COPIED.match(line)
        if match is None:
            if "Copied from [" in line:  # a marker inside a sentence would leave its table unchecked
                problems.append(
                    f"{markdown.name}:{number}: 'Copied from [...](...):' must be a line of its own"
                )
            continue
        count += 1
        try:
            source = {
                row.strip()
                for row in (markdown.parent / match.group(1)).read_text(encoding="utf-8").splitlines()
            }
        except OSError as error:
            problems.append(f"{markdown.name}:{number}: {error}")
            continue
        following = lines[number:]
        while following and not following[0].strip():
            following = following[1:]
        table = []
        for row in following:
            if not row.startswith("|"):
                break
            table.append(row)
        if not table:
            problems.append(f"{markdown.name}:{number}: no table follows")
        start = len(lines) - len(following) + 1
        problems += [
            f"{markdown.name}:{start + offset}: not a row of {match.group(1)}: {row}"
            for offset, row in enumerate(table)
            if row.strip() not in source
        ]
    return count, problems


def published() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_figure_quoted_from_a_results_file_is_the_file_s_figure():
    checked = {path.name: check_figures(path) for path in published()}
    problems = [problem for _, found in checked.values() for problem in found]
    assert problems == []
    # The README's own figures are quoted by this convention: a parser that found nothing would pass vacuously.
    assert checked["README.md"][0] >= 3


def test_every_table_copied_from_a_results_file_is_rows_of_that_file():
    problems = [problem for path in published() for problem in check_copied_tables(path)[1]]
    assert problems == []


def test_the_small_data_tables_are_the_bench_s_own_summary_of_its_committed_rows():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from small_data import table
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for rows in sorted((ROOT / "bench" / "results").glob("small_data*.jsonl")):
        assert rows.with_suffix(".md").read_text(encoding="utf-8") == table(rows) + "\n", rows.name


def test_the_checker_finds_a_copied_row_its_file_does_not_hold(tmp_path):
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "t.md").write_text(
        "Host: x\n\n| a | b |\n|---|---|\n| full | 98.12% |\n"
    )
    page = tmp_path / "page.md"
    copied = "Copied from [bench/results/t.md](bench/results/t.md):\n\n| a | b |\n|---|---|\n"
    page.write_text(copied + "| full | 98.12% |\n\nAfter.\n")
    assert check_copied_tables(page) == (1, [])
    page.write_text(copied + "| full | 98.13% |\n")
    count, problems = check_copied_tables(page)
    assert count == 1
    assert problems == ["page.md:5: not a row of bench/results/t.md: | full | 98.13% |"]
    page.write_text("Copied from [bench/results/t.md](bench/results/t.md):\n\nNo table.\n")
    assert check_copied_tables(page)[1] == ["page.md:1: no table follows"]
    page.write_text("As measured. " + copied + "| full | 98.13% |\n")
    assert check_copied_tables(page) == (
        0,
        ["page.md:1: 'Copied from [...](...):' must be a line of its own"],
    )


def test_every_link_into_bench_results_names_a_committed_file():
    missing = []
    for markdown in published():
        for target in re.findall(
            r"\]\(([^)\s#]*bench/results/[^)\s#]+)", markdown.read_text(encoding="utf-8")
        ):
            if not (markdown.parent / target).resolve().is_file():
                missing.append(f"{markdown.name}: {target}")
    assert missing == []


@pytest.fixture
def results_and_page(tmp_path):
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    rows = [{"label": "TRL tuned", "tps": 49.77}, {"label": "tunesmith default", "tps": 84.64, "mfu": 0.5612}]
    (results / "speed.json").write_text(json.dumps({"rows": rows, "minutes": {"demo": 725.0}, "half": 0.125}))
    docs = tmp_path / "docs"
    docs.mkdir()
    return docs / "page.md"


@pytest.mark.parametrize(
    "quote",
    [
        "[84.6](../bench/results/speed.json#rows.1.tps)",
        "[84.6 tokens/s](../bench/results/speed.json#rows.label=tunesmith%20default.tps)",
        "[56.1%](../bench/results/speed.json#rows.1.mfu*100)",
        "[12.1 min](../bench/results/speed.json#minutes.demo/60)",
        "[85](../bench/results/speed.json#rows.1.tps)",
        "[1.70x](../bench/results/speed.json#rows.1.tps/rows.0.tps)",
        "[0.13](../bench/results/speed.json#half)",  # 0.125: half away from zero
        "[0.12](../bench/results/speed.json#half)",  # 0.125: as Python's format() prints it
    ],
)
def test_the_checker_accepts_a_figure_as_its_file_rounds_it(results_and_page, quote):
    results_and_page.write_text(f"tunesmith trains at {quote} here.\n")
    assert check_figures(results_and_page) == (1, [])


@pytest.mark.parametrize(
    ("quote", "reason"),
    [
        ("[84.7](../bench/results/speed.json#rows.1.tps)", "which shows as 84.6"),
        ("[84.60](../bench/results/speed.json#rows.1.tps)", "which shows as 84.64"),
        ("[49.8](../bench/results/speed.json#rows.1.tps)", "which shows as 84.6"),
        ("[-84.6](../bench/results/speed.json#rows.1.tps)", "which shows as 84.6"),
        ("[56.1%](../bench/results/speed.json#rows.1.mfu)", "which shows as 0.6"),
        ("[84.6](../bench/results/speed.json#rows.label=classic.tps)", "0 list items match"),
        ("[84.6](../bench/results/speed.json#rows.1.seconds)", "seconds: not in the file"),
        ("[84.6](../bench/results/missing.json#rows.1.tps)", "No such file"),
        ("[TRL](../bench/results/speed.json#rows.0.label)", "does not start with a number"),
        ("[1](../bench/results/speed.json#rows.0.label)", "not a number"),
        ("[1.69x](../bench/results/speed.json#rows.1.tps/rows.0.tps)", "which shows as 1.70"),
        ("[0.11](../bench/results/speed.json#half)", "which shows as 0.13"),
        ("[1.70x](../bench/results/speed.json#rows.1.tps/rows.2.tps)", "list index out of range"),
    ],
)
def test_the_checker_rejects_a_figure_its_file_does_not_hold(results_and_page, quote, reason):
    results_and_page.write_text(f"A line before.\nWe measured {quote}.\n")
    count, problems = check_figures(results_and_page)
    assert count == 1
    assert len(problems) == 1
    assert problems[0].startswith("page.md:2:")
    assert reason in problems[0]


def test_the_demo_saves_the_figures_it_prints_in_its_run_folder(tmp_path):
    from tunesmith.quickstart import save_figures

    (tmp_path / "samples.jsonl").write_text(
        json.dumps({"reference": "Real", "base": "b", "tuned": "t"}) + "\n"
    )
    summary = {
        "run_dir": str(tmp_path),
        "validation_loss_before": 4.0,
        "validation_loss_after": 3.0,
        "test_before": {"loss": 5.0},
        "test": {"loss": 4.5},
        "peak_memory_mb": 3637.0,
    }
    path = save_figures(summary, {"base": {"pairs": 30}})
    assert path == tmp_path / "quickstart.json"
    figures = json.loads(path.read_text())
    assert figures["validation_loss_change_percent"] == pytest.approx(-25.0)
    assert figures["test_loss_change_percent"] == pytest.approx(-10.0)
    assert figures["peak_memory_mb"] == 3637.0
    assert figures["base"] == {"pairs": 30}
    assert figures["samples"] == [{"reference": "Real", "base": "b", "tuned": "t"}]


def test_the_preference_demo_saves_the_base_and_tuned_figures_it_prints(tmp_path, capsys):
    from tunesmith.quickstart_preference import print_comparison

    evaluation_folder = tmp_path / "eval" / "validation"
    evaluation_folder.mkdir(parents=True)
    generation = {
        "prompt": "Write.\n\nArticle",
        "reference": "Real",
        "base_output": "A paragraph",
        "output": "Tuned",
    }
    (evaluation_folder / "generations.jsonl").write_text(json.dumps(generation) + "\n")
    scores = {
        "baseline": {"pairs": 29, "likelihood_accuracy": 0.241, "preference_accuracy": 0.0},
        "tuned": {"pairs": 29, "likelihood_accuracy": 0.931, "preference_accuracy": 0.207},
    }
    for side, words, rouge in (("baseline", 11.6, 14.54), ("tuned", 6.4, 24.3)):
        scores[side] |= {"mean_answer_words": words, "generation_rougeL": rouge}
    print_comparison({"run_dir": str(tmp_path)}, {**scores, "folder": str(evaluation_folder)})
    figures = json.loads((tmp_path / "quickstart.json").read_text())
    assert figures["base"]["likelihood_accuracy"] == 0.241
    assert figures["tuned"] == scores["tuned"]
    assert figures["evaluation_folder"] == str(evaluation_folder)
    printed = capsys.readouterr().out
    assert "93.1" in printed
    assert f"these figures, saved: {tmp_path / 'quickstart.json'}" in printed


def test_a_bench_results_file_carries_its_host_load_date_command_and_versions(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from results_file import Provenance, write_results
    finally:
        sys.path.remove(str(ROOT / "bench"))

    provenance = Provenance.begin(["python", "bench/example.py", "--steps", "3"])
    path = write_results("example", {"rows": [{"tokens_per_second": 84.6}]}, provenance, tmp_path)
    written = json.loads(path.read_text())
    meta = written["meta"]
    assert written["rows"] == [{"tokens_per_second": 84.6}]
    assert meta["command"] == "python bench/example.py --steps 3"
    assert len(meta["load_average_before"]) == len(meta["load_average_after"]) == 3
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        assert ("avx2" in meta["host"]["flags"]) == (" avx2 " in cpuinfo.read_text().replace("\n", " "))
    assert meta["versions"]["torch"] == __import__("torch").__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", meta["date"])
    with pytest.raises(ValueError, match="meta"):
        write_results("example", {"meta": {}}, provenance, tmp_path)
