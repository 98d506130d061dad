"""Model answers read back into reasoning, text and tool calls: on strings the templates really render."""

from __future__ import annotations

import json

import pytest

from conftest import build_tokenizer
from test_tool_data import CONVERT, qwen_tokenizer
from tunesmith.data.conversation import Message, ToolCall
from tunesmith.data.templates import Renderer
from tunesmith.data.tool_output import ParsedCall, read_answer

TOOLS = (json.dumps(CONVERT),)
TWO_CALLS = Message(
    "assistant",
    "Converting both.",
    (
        ToolCall("c1", "convert", '{"value": 5, "unit": "km"}'),
        ToolCall("c2", "convert", '{"value": 2.5, "unit": "mi"}'),
    ),
    reasoning="Two distances, two calls.",
)


def rendered_answer(renderer: Renderer, message: Message) -> str:
    """The assistant turn as the template writes it, without its end-of-turn token: what a model generates."""
    text = renderer.turns((("user", "convert"), message), TOOLS)[-1][0]
    return text.removesuffix("\n").removesuffix("<|im_end|>")


@pytest.mark.parametrize("tokenizer", [build_tokenizer, qwen_tokenizer], ids=["tunesmith", "qwen2.5"])
def test_calls_written_by_a_template_are_read_back_exactly(tokenizer):
    renderer = Renderer(tokenizer(), "auto", tools=True)
    message = TWO_CALLS if renderer.renders_reasoning else TWO_CALLS._replace(reasoning=None)
    answer = read_answer(rendered_answer(renderer, message))
    assert answer.calls == [
        ParsedCall("convert", {"value": 5, "unit": "km"}),
        ParsedCall("convert", {"value": 2.5, "unit": "mi"}),
    ]
    assert answer.content == "Converting both."
    assert answer.reasoning == message.reasoning


def test_a_plain_answer_and_a_broken_call_stay_text():
    assert read_answer("About 3.11 miles.").calls == []
    broken = '<tool_call>\n{"name": "convert", "arguments": {"value": 5,}\n</tool_call>'
    answer = read_answer(broken)
    assert answer.calls == [] and answer.content == broken
    assert read_answer(broken, calls=False).content == broken
    assert (
        read_answer("<think>\nhmm\n</think>\n\nYes.", separate_reasoning=False).content
        == "<think>\nhmm\n</think>\n\nYes."
    )
    assert read_answer("<think>\nstill thinking").reasoning == "still thinking"  # cut off by max_tokens


def test_every_partial_reading_is_a_prefix_of_the_final_one():
    renderer = Renderer(build_tokenizer(), "tools")
    text = rendered_answer(renderer, TWO_CALLS) + " Done."
    final = read_answer(text)
    for end in range(len(text) + 1):
        partial = read_answer(text[:end], final=False)
        assert final.content.startswith(partial.content), text[:end]
        assert (final.reasoning or "").startswith(partial.reasoning or ""), text[:end]
        assert len(partial.calls) == text[:end].count("</tool_call>")
    assert final.content == "Converting both.\n\n Done."


def test_tool_scores_count_names_exact_arguments_schema_and_silence_per_turn():
    from test_tool_data import example
    from tunesmith.data.validate import Example
    from tunesmith.evaluation.tool_calls import tool_scores, tool_turns

    conversation = example()  # a call turn (with reasoning) then an answer turn
    reasoned = Example(
        "y", (("user", "Is 2 prime?"), Message("assistant", "Yes.", reasoning="2 has no divisors."))
    )
    turns = tool_turns([conversation, reasoned, Example("z", (("user", "hi"), ("assistant", "hello")))], 10)
    assert [(t.where, t.reference.content) for t in turns] == [
        ("x", ""),
        ("x", "About 3.11 miles."),
        ("y", "Yes."),
    ]
    renderer = Renderer(build_tokenizer(), "tools")
    right = rendered_answer(renderer, conversation.messages[1])
    right_answer = "<think>\n2 is prime.\n</think>\n\nyes"
    perfect = tool_scores(turns, [right, "About 3.11 miles.", right_answer], ["", "", "Yes!"])
    assert perfect == {
        "tool_turns": 3,
        "tool_name_accuracy": 100.0,
        "tool_arguments_exact": 100.0,
        "tool_arguments_valid": 100.0,
        "no_call_accuracy": 100.0,
        "answer_after_tool_accuracy": 100.0,
        "answer_after_tool_grounded": 100.0,
        "answer_accuracy": 100.0,
        "answer_accuracy_no_trace": 100.0,
    }
    assert [t.after_tool for t in turns] == [None, "3.11", None]
    guessed = tool_scores(turns[1:2], ["About 3 miles."])  # not the result's value
    assert guessed["answer_after_tool_accuracy"] == 0.0 and guessed["answer_after_tool_grounded"] == 0.0
    reworded = tool_scores(turns[1:2], ["That is 3.11 miles."])
    assert reworded["answer_after_tool_accuracy"] == 0.0 and reworded["answer_after_tool_grounded"] == 100.0
    wrong_value = right.replace('"value": 5', '"value": 6')
    off_schema = right.replace('"unit": "km"', '"unit": "yd"')
    assert tool_scores(turns[:1], [wrong_value])["tool_arguments_exact"] == 0.0
    assert tool_scores(turns[:1], [wrong_value])["tool_arguments_valid"] == 100.0
    assert tool_scores(turns[:1], [off_schema])["tool_arguments_valid"] == 0.0
    assert tool_scores(turns[:1], ["About 3 miles."])["tool_name_accuracy"] == 0.0
    called_anyway = tool_scores(turns[1:], [right, "No."], ["", "Yes"])
    assert called_anyway["no_call_accuracy"] == 50.0
    assert called_anyway["answer_accuracy"] == 0.0 and called_anyway["answer_accuracy_no_trace"] == 100.0


def test_result_values_are_the_scalars_of_a_json_result_or_its_whole_text():
    from tunesmith.evaluation.tool_calls import grounded, result_values

    assert sorted(
        result_values('{"city": "Oslo", "weather": {"temp": 3.5, "tags": ["cold", null, true]}}')
    ) == [
        "3.5",
        "Oslo",
        "cold",
    ]
    assert result_values("sunny ") == ["sunny"] and result_values("") == []
    assert grounded("It is OSLO at 3.5 degrees, cold.", '{"city": "Oslo", "t": 3.5, "w": "cold"}')
    assert not grounded("It is Oslo.", '{"city": "Oslo", "t": 3.5}')
    assert not grounded("anything", "  ")
