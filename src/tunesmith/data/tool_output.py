"""A model's answer read back: reasoning, text and tool calls, as written by the tools template's convention.

The Hermes / Qwen convention (data/tool_template.py): `<think>...</think>` first, then text, and each call as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. A block that is not a JSON object with a name stays in
the text, as vLLM's hermes parser leaves it. While an answer streams, `read_answer(text, final=False)` holds back
what may still turn into a marker or a call, so every partial reading is a prefix of the final one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
MARKERS = (THINK_OPEN, THINK_CLOSE, CALL_OPEN)


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: dict

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass
class Answer:
    content: str = ""
    reasoning: str | None = None
    calls: list[ParsedCall] = field(default_factory=list)


def split_reasoning(text: str, final: bool) -> tuple[str | None, str]:
    """(reasoning, rest): a leading <think> block, or everything before a lone </think> (templates such as Qwen3's
    open the block in the prompt); an unclosed block is all reasoning."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        inner = stripped[len(THINK_OPEN) :]
        if THINK_CLOSE in inner:
            reasoning, rest = inner.split(THINK_CLOSE, 1)
            return reasoning.strip(), rest
        return (inner if final else held_back(inner)).strip(), ""
    if THINK_CLOSE in text:
        reasoning, rest = text.split(THINK_CLOSE, 1)
        return reasoning.strip(), rest
    return None, text


def held_back(text: str) -> str:
    """Text without a tail that may be the start of a marker (`<`, `<tool_`, `</thi`) still being written."""
    for cut in range(min(len(text), max(map(len, MARKERS))), 0, -1):
        if any(marker.startswith(text[-cut:]) for marker in MARKERS):
            return text[:-cut]
    return text


def parse_call(body: str) -> ParsedCall | None:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))  # Llama 3.1 writes "parameters"
    if isinstance(arguments, str):  # some models write the arguments object as JSON text
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return ParsedCall(value["name"], arguments) if isinstance(arguments, dict) else None


def read_answer(text: str, final: bool = True, calls: bool = True, separate_reasoning: bool = True) -> Answer:
    """The answer's reasoning, text and calls; `calls=False` leaves <tool_call> blocks in the text and
    `separate_reasoning=False` leaves <think> blocks in it."""
    reasoning, rest = split_reasoning(text, final) if separate_reasoning else (None, text)
    if reasoning is not None and not final and not rest and THINK_CLOSE not in text:
        return Answer("", reasoning)
    parsed: list[ParsedCall] = []
    kept = []
    position = 0
    for match in CALL_BLOCK.finditer(rest) if calls else ():
        call = parse_call(match.group(1).strip())
        if call is not None:
            parsed.append(call)
            kept.append(rest[position : match.start()])
            position = match.end()
    tail = rest[position:]
    if not final:
        unfinished = tail.find(CALL_OPEN) if calls else -1
        tail = held_back(tail if unfinished < 0 else tail[:unfinished])
    content = ("".join(kept) + tail).strip()
    return Answer(content, reasoning, parsed)
