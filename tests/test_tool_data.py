"""Tool-call and reasoning data: rows checked by file:line, rendered by one template, masked token by token."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import yaml

from conftest import build_tokenizer, write_jsonl
from tunesmith.config import DataConfig
from tunesmith.data.conversation import Message, ToolCall
from tunesmith.data.prepare import IGNORE, check_data, encode
from tunesmith.data.preview import segments
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.data.tool_template import TOOLS_TEMPLATE
from tunesmith.data.validate import Example

CONVERT = {
    "type": "function",
    "function": {
        "name": "convert",
        "description": "Convert a distance",
        "parameters": {
            "type": "object",
            "properties": {"value": {"type": "number"}, "unit": {"type": "string", "enum": ["km", "mi"]}},
            "required": ["value", "unit"],
        },
    },
}


def call(name="convert", arguments='{"value": 5, "unit": "km"}', call_id="c1") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_row(**changes) -> dict:
    messages = [
        {"role": "user", "content": "5 km in miles?"},
        {"role": "assistant", "content": None, "reasoning_content": "I convert.", "tool_calls": [call()]},
        {"role": "tool", "tool_call_id": "c1", "content": "3.11"},
        {"role": "assistant", "content": "About 3.11 miles."},
    ]
    return {"tools": [CONVERT], "messages": messages, **changes}


def with_message(index: int, **fields) -> dict:
    row = tool_row()
    row["messages"][index] = {**row["messages"][index], **fields}
    return row


BAD_ROWS = [
    (with_message(1, tool_calls=[call(name="weather")]), "messages[1].tool_calls[0] calls 'weather', which is not among"),
    (with_message(1, tool_calls=[call(arguments='{"value": 5,')]), "messages[1].tool_calls[0].function.arguments is not valid JSON"),
    (with_message(1, tool_calls=[call(arguments='{"value": 5}')]), "does not satisfy the function's schema: 'unit' is a required property"),
    (with_message(1, tool_calls=[call(arguments={"value": "5", "unit": "km"})]), "schema at .value: '5' is not of type 'number'"),
    (with_message(1, tool_calls=[call(arguments={"value": 5, "unit": "yd"})]), "schema at .unit: 'yd' is not one of ['km', 'mi']"),
    (with_message(2, tool_call_id="c9"), "messages[2] is a tool result for tool_call_id 'c9', but no earlier assistant call is open"),
    (with_message(0, thinking="hmm"), "messages[0].thinking is only for assistant messages, this one is 'user'"),
    (tool_row(tools=[{"name": "convert"}]), 'tools[0] must be {"type": "function"'),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "train": False}]}, "every assistant message says train: false"),
]  # fmt: skip


def test_every_bad_tool_row_is_named_by_file_line_with_its_reason(tmp_path):
    rows = [tool_row()] + [row for row, _ in BAD_ROWS]
    path = write_jsonl(tmp_path / "tools.jsonl", rows)
    checked = check_data(
        DataConfig(train_file=str(path), validation_ratio=0.0, test_ratio=0, on_error="skip")
    )
    assert len(checked.train) == 1
    assert len(checked.problems) == len(BAD_ROWS)
    for line, ((_, reason), problem) in enumerate(zip(BAD_ROWS, checked.problems, strict=True), start=2):
        assert problem.startswith(f"{path}:{line}: "), problem
        assert reason in problem, problem
        assert "\n" not in problem


def test_a_tool_row_becomes_messages_with_calls_results_and_reasoning(tmp_path):
    as_object = with_message(
        1, tool_calls=[call(arguments={"value": 5, "unit": "km"})], reasoning_content=None
    )
    as_object["messages"][1]["thinking"] = "I convert."
    path = write_jsonl(
        tmp_path / "tools.jsonl", [tool_row(), as_object, {"messages": tool_row()["messages"][-1:]}]
    )
    checked = check_data(
        DataConfig(train_file=str(path), validation_ratio=0.0, test_ratio=0, deduplicate=False)
    )
    first, second, plain = checked.train
    expected_call = ToolCall("c1", "convert", '{"value": 5, "unit": "km"}')
    assert first.messages[1] == Message("assistant", "", (expected_call,), None, "I convert.")
    assert first.messages[2] == Message("tool", "3.11", tool_call_id="c1")
    assert first.messages[0] == ("user", "5 km in miles?")  # plain messages stay (role, content) pairs
    assert json.loads(first.tools[0]) == CONVERT
    assert (
        second.key == first.key
    )  # arguments as text or as an object, `thinking` or `reasoning_content`: equal
    assert plain.messages == (("assistant", "About 3.11 miles."),) and plain.tools == ()


def example() -> Example:
    messages = (
        ("user", "5 km in miles?"),
        Message(
            "assistant",
            "",
            (ToolCall("c1", "convert", '{"value": 5, "unit": "km"}'),),
            reasoning="I convert.",
        ),
        Message("tool", "3.11", tool_call_id="c1"),
        ("assistant", "About 3.11 miles."),
    )
    return Example("x", messages, tools=(json.dumps(CONVERT),))


CALL_TEXT = '<tool_call>\n{"name": "convert", "arguments": {"value": 5, "unit": "km"}}\n</tool_call>'


def test_tools_template_is_chosen_when_the_model_template_cannot_show_tools_and_renders_the_convention():
    tokenizer = build_tokenizer()  # plain ChatML: no tools
    assert Renderer(build_tokenizer(), "auto").tokenizer.chat_template != TOOLS_TEMPLATE
    renderer = Renderer(tokenizer, "auto", tools=True)
    assert tokenizer.chat_template == TOOLS_TEMPLATE and renderer.renders_tools and renderer.renders_reasoning
    text = renderer.render(example().messages, add_generation_prompt=False, tools=example().tools)
    assert text.startswith("<|im_start|>system\n# Tools\n\n") and json.dumps(CONVERT) in text
    assert text.endswith(
        "<|im_start|>user\n5 km in miles?<|im_end|>\n"
        f"<|im_start|>assistant\n<think>\nI convert.\n</think>\n\n{CALL_TEXT}<|im_end|>\n"
        "<|im_start|>tool\n<tool_response>\n3.11\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nAbout 3.11 miles.<|im_end|>\n"
    )


def test_a_template_without_tools_refuses_tool_data_by_name():
    renderer = Renderer(build_tokenizer(), "chat")
    with pytest.raises(Exception, match="cannot show tools"):
        renderer.render(example().messages, add_generation_prompt=False, tools=example().tools)


def trained_runs(item: dict, tokenizer) -> list[str]:
    return [
        piece["text"] for piece in segments(item["input_ids"], item["labels"], tokenizer) if piece["trained"]
    ]


def test_masks_learn_calls_and_answers_and_never_tool_results_token_by_token():
    renderer = Renderer(build_tokenizer(), "tools")
    item = encode(example(), renderer, LossMask())
    tokenizer = renderer.tokenizer
    answer = "About 3.11 miles.<|im_end|>\n"
    reasoned_call = f"<think>\nI convert.\n</think>\n\n{CALL_TEXT}<|im_end|>\n"
    assert trained_runs(item, tokenizer) == [reasoned_call, answer]
    # token by token: a label is its token exactly where the token is learned, IGNORE everywhere else
    learned = [label != IGNORE for label in item["labels"]]
    assert all(
        label in (token, IGNORE) for token, label in zip(item["input_ids"], item["labels"], strict=True)
    )
    read = tokenizer.decode([t for t, keep in zip(item["input_ids"], learned, strict=True) if not keep])
    assert "3.11\n</tool_response>" in read and "5 km in miles?" in read and "# Tools" in read
    assert sum(learned) == len(tokenizer(reasoned_call)["input_ids"]) + len(tokenizer(answer)["input_ids"])

    no_reasoning = encode(example(), renderer, LossMask(reasoning=False))
    assert trained_runs(no_reasoning, tokenizer) == [f"{CALL_TEXT}<|im_end|>\n", answer]
    assert trained_runs(encode(example(), renderer, LossMask(turns="last")), tokenizer) == [answer]
    unmarked = example()
    muted = Example(
        "x",
        (*unmarked.messages[:3], Message("assistant", "About 3.11 miles.", train=False)),
        tools=unmarked.tools,
    )
    assert trained_runs(encode(muted, renderer, LossMask()), tokenizer) == [reasoned_call]
    everything = encode(example(), renderer, LossMask("all"))
    assert everything["labels"] == everything["input_ids"]


def test_reasoning_of_earlier_turns_is_dropped_or_kept():
    conversation = (
        ("user", "first"),
        Message("assistant", "one", reasoning="early thought"),
        ("user", "second"),
        Message("assistant", "two", reasoning="late thought"),
    )
    dropped = Renderer(build_tokenizer(), "tools").render(conversation, add_generation_prompt=False)
    kept = Renderer(build_tokenizer(), "tools", reasoning_history="keep").render(conversation, False)
    assert "early thought" not in dropped and "late thought" in dropped
    assert "early thought" in kept and "late thought" in kept
    tokenizer = build_tokenizer()
    item = encode(Example("x", conversation), Renderer(tokenizer, "tools"), LossMask())
    assert trained_runs(item, tokenizer) == [
        "one<|im_end|>\n",
        "<think>\nlate thought\n</think>\n\ntwo<|im_end|>\n",
    ]


def qwen_tokenizer():
    trl = pytest.importorskip("trl")
    tokenizer = build_tokenizer()
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    return tokenizer


def test_a_qwen_style_template_that_shows_tools_is_kept_and_training_ids_equal_its_own():
    tokenizer = qwen_tokenizer()
    qwen = tokenizer.chat_template
    renderer = Renderer(tokenizer, "auto", tools=True)
    assert renderer.renders_tools and tokenizer.chat_template == qwen
    plain = example()
    messages = tuple(m if isinstance(m, Message) else Message(*m) for m in plain.messages)
    messages = (messages[0], messages[1]._replace(reasoning=None), *messages[2:])
    ids, _ = renderer.encode_conversation(messages, plain.tools)
    hf_messages = renderer.template_messages(messages, plain.tools)
    own = tokenizer.apply_chat_template(hf_messages, tools=[CONVERT], tokenize=False)
    assert ids == tokenizer(own, add_special_tokens=False)["input_ids"]
    assert CALL_TEXT in own and "<|im_start|>user\n<tool_response>\n3.11" in own  # Qwen's own tool turn


def test_data_check_preview_shows_the_rendered_tools_and_the_masks(tmp_path, tiny_model, capsys):
    from tunesmith.cli import main

    data = write_jsonl(tmp_path / "tools.jsonl", [tool_row()])
    config = {"model": {"name": str(tiny_model)}, "data": {"train_file": str(data), "validation_ratio": 0.0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    main(["data", "check", str(tmp_path / "config.yaml"), "--preview", "1"])
    captured = capsys.readouterr()
    shown = captured.out
    assert "rendered with tunesmith's tools template" in captured.out + captured.err
    assert "<tools>" in shown and f"[[<think>\nI convert.\n</think>\n\n{CALL_TEXT}<|im_end|>\n]]" in shown
    assert "[[About 3.11 miles.<|im_end|>\n]]" in shown and "[[<|im_start|>tool" not in shown


def test_the_demo_data_is_valid_and_its_test_split_holds_out_values_countries_and_a_function(tmp_path):
    from tunesmith import quickstart_tools as demo

    paths = demo.write(tmp_path, train=120, test=60, seed=0)
    checked = check_data(
        DataConfig(
            train_file=str(paths["train"]),
            test_file=str(paths["test"]),
            validation_ratio=0.0,
            deduplicate=False,
        )
    )
    assert checked.problems == [] and len(checked.train) == 120 and len(checked.test) == 60

    def calls(examples):
        return [call for e in examples for m in e.messages if isinstance(m, Message) for call in m.tool_calls]

    train_calls, test_calls = calls(checked.train), calls(checked.test)
    assert "convert_weight" not in {c.name for c in train_calls} | {
        n for e in checked.train for n in map(lambda t: json.loads(t)["function"]["name"], e.tools)
    }
    assert "convert_weight" in {c.name for c in test_calls}
    train_arguments = {json.dumps(v) for c in train_calls for v in c.argument_values.values()}
    test_arguments = {json.dumps(v) for c in test_calls for v in c.argument_values.values()}
    units = {json.dumps(u) for u in [*demo.LENGTH, *demo.WEIGHT, "C", "F"]}
    assert not (train_arguments & test_arguments) - units  # numbers, dates and countries never repeat
    checked_results = 0
    for e in checked.train:
        for call in calls([e]):
            args, result = call.argument_values, json.loads(e.messages[2][1])
            if call.name == "convert_length":
                ratio = demo.LENGTH[args["from_unit"]] / demo.LENGTH[args["to_unit"]]
                assert result["result"] == pytest.approx(args["value"] * ratio, abs=0.006)
                checked_results += 1
            elif call.name == "days_between":
                days = datetime.date.fromisoformat(args["end"]) - datetime.date.fromisoformat(args["start"])
                assert result["days"] == days.days
                checked_results += 1
    assert checked_results >= 10


def test_a_conversation_left_with_nothing_to_learn_is_dropped_and_counted(tmp_path):
    from tunesmith.data.prepare import tokenize_examples

    muted_last = with_message(3, train=False)
    path = write_jsonl(tmp_path / "tools.jsonl", [tool_row(), muted_last])
    cfg = DataConfig(
        train_file=str(path), validation_ratio=0.0, test_ratio=0, train_turns="last", max_length=2048
    )
    checked = check_data(cfg)
    assert checked.problems == [] and len(checked.train) == 2
    rows, report = tokenize_examples(checked.train, cfg, Renderer(build_tokenizer(), "tools"))
    assert len(rows) == 1 and report["dropped_with_nothing_to_learn"] == 1


def test_quickstart_tools_writes_a_config_whose_data_checks_clean_and_keeps_what_the_user_edited(tmp_path):
    from tunesmith import quickstart_tools as demo
    from tunesmith.config import config_from_dict

    config_path = demo.prepare(tmp_path / "tools", train=12, test=6)
    cfg = config_from_dict(yaml.safe_load(config_path.read_text()), base=config_path.parent)
    assert cfg.method.name == "lora" and cfg.eval.generations >= 6
    checked = check_data(cfg.data)
    assert (
        checked.problems == []
        and len(checked.test) == 6
        and len(checked.train) + len(checked.validation) == 12
    )
    edited = config_path.read_text().replace("epochs: 2", "epochs: 3")
    config_path.write_text(edited)
    (tmp_path / "tools" / "data" / "train.jsonl").write_text(json.dumps(tool_row()) + "\n")
    demo.prepare(tmp_path / "tools", train=12, test=6)
    assert config_path.read_text() == edited
    assert (tmp_path / "tools" / "data" / "train.jsonl").read_text() == json.dumps(tool_row()) + "\n"
