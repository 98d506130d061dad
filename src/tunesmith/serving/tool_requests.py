"""A chat request's tools, tool_choice and messages, checked as training rows are, and its answer read back.

The messages and tools go through the same checks as a training row (data/tool_rows.py), so a call to an unknown
function or arguments that fail the schema get a 400 naming the key. tool_choice follows OpenAI: `none` renders no
tools and reads no calls, `auto` lets the model choose, `required` and a named function start the answer with the
tools template's call opening (`<tool_call>`, docs/tools.md), which only templates in that convention continue.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from tunesmith.data.conversation import uses_agent_features
from tunesmith.data.tool_output import CALL_OPEN, Answer, read_answer
from tunesmith.data.tool_rows import chat_messages
from tunesmith.http.context import ApiError
from tunesmith.serving.schemas import ChatRequest

CHOICES = '\'none\', \'auto\', \'required\' or {"type": "function", "function": {"name": ...}}'


@dataclass(frozen=True)
class ChatTurn:
    """What the model is asked: the conversation, the tools rendered, whether calls are read, the forced start."""

    messages: tuple
    tools: tuple[str, ...] = ()
    reads_calls: bool = False
    prefill: str = ""


def forced_start(choice, names: list[str]) -> tuple[bool, str]:
    """(whether tools are offered, the answer's forced start) for a tool_choice."""
    if choice in (None, "auto"):
        return bool(names), ""
    if choice == "none":
        return False, ""
    if not names:
        raise ApiError(400, "tool_choice asks for a tool call, but the request has no tools", "tool_choice")
    if choice == "required":
        return True, CALL_OPEN + "\n"
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise ApiError(400, f"tool_choice must be {CHOICES}", "tool_choice")
    if name not in names:
        raise ApiError(
            400, f"tool_choice names {name!r}, which is not in tools ({', '.join(names)})", "tool_choice"
        )
    return True, f'{CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": '


def read_chat(body: ChatRequest, renders_tools: bool) -> ChatTurn:
    """The request's conversation checked (a 400 naming the key of the first problem)."""
    raw = [message.model_dump(exclude_none=True) for message in body.messages]
    messages, tools, problem = chat_messages(raw, "messages", body.tools, "tools", empty_content=True)
    if problem:
        raise ApiError(400, problem, "tools" if problem.startswith("tools") else "messages")
    if messages[-1][0] not in ("user", "tool"):
        raise ApiError(400, "the last message must be the user's or a tool result", "messages")
    if uses_agent_features(messages, tools) and not renders_tools:
        raise ApiError(400, "this model's template cannot show tools, tool calls or reasoning", "tools")
    names = [json.loads(tool)["function"]["name"] for tool in tools]
    offered, prefill = forced_start(body.tool_choice, names)
    return ChatTurn(messages, tools if offered else (), offered, prefill)


def message_of(answer: Answer, inline_reasoning: bool) -> dict:
    """OpenAI's assistant message for a read answer: content, tool_calls with fresh ids, reasoning_content."""
    message: dict = {"role": "assistant", "content": answer.content or (None if answer.calls else "")}
    if answer.reasoning is not None and not inline_reasoning:
        message["reasoning_content"] = answer.reasoning
    if answer.calls:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in answer.calls
        ]
    return message


def whole_message(turn: ChatTurn, text: str, inline_reasoning: bool) -> dict:
    """The assistant message of a whole generated answer (after the turn's forced start)."""
    answer = read_answer(turn.prefill + text, calls=turn.reads_calls, separate_reasoning=not inline_reasoning)
    return message_of(answer, inline_reasoning)


class AnswerReader:
    """Reads a streamed answer as it grows: the new reasoning and text of each piece, and the calls at the end;
    joined, the deltas equal the whole answer's reading."""

    def __init__(self, turn: ChatTurn, inline_reasoning: bool):
        self.text, self.turn, self.inline = turn.prefill, turn, inline_reasoning
        self.sent = {"content": "", "reasoning_content": ""}

    def read(self, final: bool) -> Answer:
        return read_answer(self.text, final, calls=self.turn.reads_calls, separate_reasoning=not self.inline)

    def delta(self, piece: str, final: bool = False) -> dict:
        """The text and reasoning `piece` adds that can no longer change (all that is left when `final`)."""
        self.text += piece
        answer = self.read(final)
        delta = {}
        for key, value in (("content", answer.content), ("reasoning_content", answer.reasoning or "")):
            if value.startswith(self.sent[key]) and len(value) > len(self.sent[key]):
                delta[key] = value[len(self.sent[key]) :]
                self.sent[key] = value
        return delta

    def closing_delta(self) -> dict:
        """What the end of the answer adds: the text held back, and each call whole (id, name, arguments)."""
        delta = self.delta("", final=True)
        calls = message_of(self.read(final=True), self.inline).get("tool_calls")
        if calls:
            delta["tool_calls"] = [{"index": index, **call} for index, call in enumerate(calls)]
        return delta
