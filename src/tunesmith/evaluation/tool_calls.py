"""Scores of generated assistant turns on tool and reasoning data: calls named and argued right, no call where none
was due, and the final answer right after a trace (or with the trace left empty).

Each assistant turn of a held-out conversation is one item: the conversation before it is the prompt (tools
rendered), the turn itself the reference. Percentages over the turns that can have them:

- `tool_name_accuracy`: turns due a call whose calls name the reference functions (in order);
- `tool_arguments_exact`: those whose calls also have JSON-equal arguments;
- `tool_arguments_valid`: those whose every call names a known function with arguments satisfying its schema;
- `no_call_accuracy`: turns due no call where the model made none;
- `answer_after_tool_accuracy`: turns answering right after a tool result whose answer matches the reference once
  normalised (as below), and `answer_after_tool_grounded`: those whose answer states every value the result
  returned (each scalar of the result's JSON, or its whole text when it is not JSON, found in the answer, case
  aside): the model read the result rather than guessed;
- `answer_accuracy` / `answer_accuracy_no_trace` (reasoning data): turns due an answer whose answer, its trace
  left aside, matches the reference once normalised (case, spaces, punctuation, articles); the second generated
  with an empty <think></think> forced at the start.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

from jsonschema import validators

from tunesmith.data.conversation import Message, as_message, function_of, uses_agent_features
from tunesmith.data.tool_output import read_answer

NO_TRACE = "<think>\n\n</think>\n\n"  # the empty trace Qwen3 templates write when thinking is off


@dataclass(frozen=True)
class ToolTurn:
    where: str
    prompt: tuple  # the conversation before the turn
    tools: tuple[str, ...]
    reference: Message
    after_tool: str | None = None  # the tool result this turn answers from, if the turn before it was one


def tool_turns(examples: list, count: int) -> list[ToolTurn]:
    """Every assistant turn of the first `count` examples with tools, calls or reasoning."""
    turns = []
    agent = [e for e in examples if e.messages and uses_agent_features(e.messages, e.tools)][:count]
    for example in agent:
        messages = [as_message(message) for message in example.messages]
        for index, message in enumerate(messages):
            if message.role == "assistant" and index > 0:
                before = messages[index - 1]
                result = before.content if before.role == "tool" else None
                turns.append(
                    ToolTurn(example.where, tuple(example.messages[:index]), example.tools, message, result)
                )
    return turns


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def result_values(result: str) -> list[str]:
    """The scalars a tool result returned, as text: each leaf of its JSON, or the whole text if it is not JSON."""
    try:
        parsed = json.loads(result)
    except ValueError:
        return [result.strip()] if result.strip() else []
    leaves, stack = [], [parsed]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif value is not None and not isinstance(value, bool):
            leaves.append(str(value))
    return leaves


def grounded(answer: str, result: str) -> bool:
    values = result_values(result)
    return bool(values) and all(value.lower() in answer.lower() for value in values)


def arguments_valid(call, tools: tuple[str, ...]) -> bool:
    schemas = {function_of(tool)["name"]: function_of(tool).get("parameters", {}) for tool in tools}
    if call.name not in schemas:
        return False
    schema = schemas[call.name]
    return validators.validator_for(schema)(schema).is_valid(call.arguments)


def percent(hits: list[bool]) -> float | None:
    return round(100 * sum(hits) / len(hits), 2) if hits else None


def tool_scores(turns: list[ToolTurn], outputs: list[str], no_trace_outputs: list[str] | None = None) -> dict:
    """The scores above for `outputs`, one generated text per turn (and per turn with reasoning, without trace)."""
    named, exact, valid, silent, answered, answered_no_trace = [], [], [], [], [], []
    after_exact, after_grounded = [], []
    for index, (turn, output) in enumerate(zip(turns, outputs, strict=True)):
        answer = read_answer(output)
        due = [(call.name, call.argument_values) for call in turn.reference.tool_calls]
        if due:
            named.append([call.name for call in answer.calls] == [name for name, _ in due])
            exact.append([(call.name, call.arguments) for call in answer.calls] == due)
            valid.append(bool(answer.calls) and all(arguments_valid(c, turn.tools) for c in answer.calls))
            continue
        silent.append(not answer.calls)
        if turn.after_tool is not None:
            after_exact.append(normalize_answer(answer.content) == normalize_answer(turn.reference.content))
            after_grounded.append(not answer.calls and grounded(answer.content, turn.after_tool))
        if turn.reference.reasoning:
            expected = normalize_answer(turn.reference.content)
            answered.append(normalize_answer(answer.content) == expected)
            if no_trace_outputs is not None:
                answered_no_trace.append(
                    normalize_answer(read_answer(no_trace_outputs[index]).content) == expected
                )
    scores = {
        "tool_turns": len(turns),
        "tool_name_accuracy": percent(named),
        "tool_arguments_exact": percent(exact),
        "tool_arguments_valid": percent(valid),
        "no_call_accuracy": percent(silent),
        "answer_after_tool_accuracy": percent(after_exact),
        "answer_after_tool_grounded": percent(after_grounded),
        "answer_accuracy": percent(answered),
        "answer_accuracy_no_trace": percent(answered_no_trace) if no_trace_outputs is not None else None,
    }
    return {name: value for name, value in scores.items() if value is not None}
