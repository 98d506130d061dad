"""Multiple-choice benchmark rows: `{"question", "choices": [...], "answer": index or the choice's text}`, one JSON
object a line, read and checked before any model is loaded; every bad row is named by file:line and field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError

MAX_LISTED = 50  # bad rows listed in one error; the count says how many more


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int  # the index of the right choice

    def to_row(self) -> dict:
        return {"question": self.question, "choices": list(self.choices), "answer": self.answer}


def row_problems(row) -> list[str]:
    """What is wrong with one parsed row, as 'field: why' (empty: the row is good)."""
    if not isinstance(row, dict):
        return [f"row: a JSON object is needed, got {type(row).__name__}"]
    problems = []
    question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    if not isinstance(question, str) or not question.strip():
        problems.append("question: missing or empty (a non-empty string is needed)")
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        problems.append("choices: a list of non-empty strings is needed")
        return problems
    if len(choices) < 2:
        problems.append(f"choices: {len(choices)} given; 2 or more are needed")
    repeated = sorted({c for c in choices if choices.count(c) > 1})
    if repeated:
        problems.append(f"choices: {repeated[0]!r} appears more than once (the answer would be ambiguous)")
    if "answer" not in row:
        problems.append("answer: missing (the index of the right choice, or its text)")
    elif isinstance(answer, bool) or not isinstance(answer, (int, str)):
        problems.append(f"answer: {answer!r} is neither an index nor a choice's text")
    elif isinstance(answer, int) and not 0 <= answer < len(choices):
        problems.append(
            f"answer: index {answer} is out of range for {len(choices)} choices (0-{len(choices) - 1})"
        )
    elif isinstance(answer, str) and answer not in choices:
        problems.append(f"answer: {answer!r} is not one of the choices {choices}")
    return problems


def read_questions(path: str | Path) -> list[Question]:
    """Every row of a multiple-choice JSONL file, or one TunesmithError naming each bad row by line and field."""
    path = Path(path)
    if not path.is_file():
        raise TunesmithError(f"{path}: no such multiple-choice file")
    questions, bad, bad_rows = [], [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(f"  {path}:{number}: not a JSON object ({exc.msg})")
            bad_rows += 1
            continue
        problems = row_problems(row)
        if problems:
            bad.extend(f"  {path}:{number}: {problem}" for problem in problems)
            bad_rows += 1
            continue
        answer = row["answer"] if isinstance(row["answer"], int) else row["choices"].index(row["answer"])
        questions.append(Question(row["question"], tuple(row["choices"]), answer))
    if bad:
        more = [f"  ... and {len(bad) - MAX_LISTED} more"] if len(bad) > MAX_LISTED else []
        raise TunesmithError(
            f"{path}: {bad_rows} bad multiple-choice row(s); each row needs question, choices "
            "(2 or more, distinct) and answer (the right choice's index or text)",
            bad[:MAX_LISTED] + more,
        )
    if not questions:
        raise TunesmithError(f"{path}: no multiple-choice rows (one JSON object a line)")
    return questions
