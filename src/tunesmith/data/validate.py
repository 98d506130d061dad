"""Row validation: every row becomes an Example or a problem naming its file, line and the fix."""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.config import DataConfig
from tunesmith.data.readers import Row
from tunesmith.data.tool_rows import chat_messages
from tunesmith.errors import TunesmithError

ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Example:
    """One training example in canonical form: a conversation, or plain text (messages empty)."""

    where: str
    # (role, content) pairs, or data.conversation.Message where a message has tool calls, results or reasoning
    messages: tuple = ()
    text: str | None = None
    tools: tuple[str, ...] = ()  # the row's function definitions, each as JSON text (data/conversation.py)

    @property
    def key(self) -> tuple:
        return (self.messages, self.text, self.tools) if self.tools else (self.messages, self.text)


def detect_format(rows: list[Row], cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    for row in rows:
        if row.data is None:
            continue
        keys = set(row.data)
        if cfg.messages_field in keys:
            return "chat"
        if {"instruction", "output"} <= keys:
            return "alpaca"
        if {cfg.prompt_field, cfg.response_field} <= keys:
            return "prompt_response"
        if cfg.text_field in keys:
            return "text"
        raise TunesmithError(
            f"{row.where}: cannot tell the data format from the fields {sorted(keys)}; "
            f"set data.format (prompt_response | alpaca | chat | text) and the field names, "
            f"e.g. data.prompt_field / data.response_field"
        )
    raise TunesmithError(
        f"{rows[0].source if rows else 'data'}: no readable rows; check the file is not empty"
    )


def _text(data: dict, field: str, required: bool = True) -> tuple[str | None, str | None]:
    """Return (value, problem) for a string field."""
    if field not in data or data[field] is None:
        if not required:
            return "", None
        if field in data:
            return None, f"field '{field}' is null; give it a value or remove the row"
        present = ", ".join(sorted(data)) or "none"
        return None, f"missing field '{field}' (fields present: {present})"
    value = data[field]
    if not isinstance(value, str):
        return None, f"field '{field}' must be a string, got {type(value).__name__}"
    if required and not value.strip():
        return None, f"field '{field}' is empty"
    return value, None


def message_turns(value: list, field: str) -> tuple[tuple | None, str | None]:
    """A list of chat messages as (role, content) pairs, or the first message that is not one (named by index)."""
    turns = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            return None, f"{field}[{index}] must be an object with 'role' and 'content'"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return None, f"{field}[{index}].role must be one of {sorted(ROLES)}, got {role!r}"
        if not isinstance(content, str) or not content.strip():
            return None, f"{field}[{index}].content must be a non-empty string"
        turns.append((role, content))
    return tuple(turns), None


def _messages(data: dict, field: str, tools_field: str) -> tuple[tuple | None, tuple, str | None]:
    value = data.get(field)
    if field in data and value is None:
        return (
            None,
            (),
            f"field '{field}' is null; give it a list of {{role, content}} objects or remove the row",
        )
    if not isinstance(value, list) or not value:
        return None, (), f"field '{field}' must be a non-empty list of {{role, content}} objects"
    turns, tools, problem = chat_messages(value, field, data.get(tools_field), tools_field)
    if problem:
        return None, (), problem
    if not any(turn[0] == "assistant" for turn in turns):
        return None, (), f"field '{field}' has no assistant message to learn from"
    if all(len(turn) > 2 and turn.train is False for turn in turns if turn[0] == "assistant"):
        return None, (), f"field '{field}': every assistant message says train: false, so nothing is learned"
    return turns, tools, None


def to_example(row: Row, fmt: str, cfg: DataConfig) -> tuple[Example | None, str | None]:
    data = row.data
    system = [("system", cfg.system_prompt)] if cfg.system_prompt else []
    if fmt == "prompt_response":
        prompt, problem = _text(data, cfg.prompt_field)
        response, problem2 = _text(data, cfg.response_field)
        if problem or problem2:
            return None, problem or problem2
        return Example(row.where, (*system, ("user", prompt), ("assistant", response))), None
    if fmt == "alpaca":
        instruction, problem = _text(data, "instruction")
        extra, problem2 = _text(data, "input", required=False)
        output, problem3 = _text(data, "output")
        if problem or problem2 or problem3:
            return None, problem or problem2 or problem3
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return Example(row.where, (*system, ("user", prompt), ("assistant", output))), None
    if fmt == "chat":
        turns, tools, problem = _messages(data, cfg.messages_field, cfg.tools_field)
        if problem:
            return None, problem
        if system and turns[0][0] != "system":
            turns = (*system, *turns)
        return Example(row.where, turns, tools=tools), None
    text, problem = _text(data, cfg.text_field)
    return (None, problem) if problem else (Example(row.where, text=text), None)


def validate_rows(rows: list[Row], cfg: DataConfig, fmt: str) -> tuple[list[Example], list[str]]:
    """Return the valid examples and one 'file:line: reason' problem per bad row."""
    return each_row(rows, lambda row: to_example(row, fmt, cfg))


def each_row(rows: list[Row], convert) -> tuple[list, list[str]]:
    """The examples `convert(row) -> (example, problem)` makes of the readable rows, and one 'file:line: reason'
    per row it refuses or the reader could not read."""
    examples, problems = [], []
    for row in rows:
        if row.error:
            problems.append(f"{row.where}: {row.error}")
            continue
        example, problem = convert(row)
        if problem:
            problems.append(f"{row.where}: {problem}")
        else:
            examples.append(example)
    return examples, problems
