"""The canonical chat message: a role and its text, plus the tool calls, tool results and reasoning of agent data.

Rows follow OpenAI's and the Hugging Face chat-template conventions (docs/tools.md): a row's `tools` list holds
function definitions (`{"type": "function", "function": {"name", "description", "parameters"}}`), an assistant
message may carry `tool_calls` (`{"id", "type": "function", "function": {"name", "arguments"}}`, arguments a JSON
object or its text) and `reasoning_content` (or `thinking`), a `tool` message answers one call by `tool_call_id`,
and any message may say `train: false`. Everything is kept as tuples of plain values, so examples stay hashable
(deduplication) and JSON-serializable (the tokenization cache key).
"""

from __future__ import annotations

import json
from typing import NamedTuple

ROLES = {"system", "user", "assistant", "tool"}
REASONING_FIELDS = ("reasoning_content", "thinking")


class ToolCall(NamedTuple):
    id: str
    name: str
    arguments: str  # the arguments object as compact JSON text, keys in the order written

    @property
    def argument_values(self) -> dict:
        return json.loads(self.arguments)


class Message(NamedTuple):
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    reasoning: str | None = None
    train: bool | None = None  # False: never learned from; None: as the loss settings say


def as_message(message) -> Message:
    """A Message from a Message or a plain (role, content) pair, the form the rest of tunesmith passes around."""
    return message if isinstance(message, Message) else Message(*message)


def function_of(tool: str) -> dict:
    """The `function` object of a tool definition kept as JSON text in Example.tools."""
    return json.loads(tool)["function"]


def tool_names(tools: tuple[str, ...]) -> list[str]:
    return [function_of(tool)["name"] for tool in tools]


def uses_agent_features(messages, tools: tuple = ()) -> bool:
    """Whether a conversation needs more than (role, content): tools, calls, tool results or reasoning."""
    if tools:
        return True
    for message in map(as_message, messages):
        if message.tool_calls or message.role == "tool" or message.reasoning:
            return True
    return False


def to_openai(message: Message) -> dict:
    """A message as Hugging Face chat templates read it: arguments as an object, reasoning as reasoning_content."""
    shown: dict = {"role": message.role, "content": message.content}
    if message.tool_calls:
        shown["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.argument_values},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        shown["tool_call_id"] = message.tool_call_id
    if message.reasoning:
        shown["reasoning_content"] = message.reasoning
    return shown
