"""A tiny model trained on one tool conversation: `tunesmith serve` round-trips call -> result -> answer through the
official openai client (streamed and not; malformed tools get a 400 naming the key), and `tunesmith eval` scores
its calls against the base model's."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import openai
import pytest
import uvicorn

from conftest import tiny_config, write_jsonl
from test_tool_data import CONVERT, tool_row
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.export import ollama

QUESTION = [{"role": "user", "content": "5 km in miles?"}]
ANSWER = "About 3.11 miles."


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory, tiny_model):
    """The tiny model trained until it answers the question with the call, and the tool's result with ANSWER."""
    folder = tmp_path_factory.mktemp("tool-run")
    data = write_jsonl(folder / "tools.jsonl", [tool_row()] * 8)
    raw = tiny_config(
        folder,
        tiny_model,
        data={"train_file": str(data), "validation_ratio": 0.0, "test_ratio": 0, "deduplicate": False, "max_length": 1024},
        method={"name": "full"},
        train={"max_steps": 80, "learning_rate": 2e-2, "scheduler": "constant", "save_steps": 80, "eval_steps": 80, "batch_size": 2},
        eval={"samples": 0, "before_training": False, "max_new_tokens": 160},
        output={"name": "tools"},
    )  # fmt: skip
    return api.train(config_from_dict(raw))["run_dir"], data


@pytest.fixture(scope="module")
def client(tool_run):
    app = api.serve_app([tool_run[0]], max_tokens_cap=160)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    server.should_exit = True
    thread.join(timeout=10)


def ask(client, messages, **options):
    return client.chat.completions.create(model="tools", messages=messages, max_tokens=160, **options)


def test_a_call_its_result_and_the_answer_round_trip_through_the_openai_client(client):
    first = ask(client, QUESTION, tools=[CONVERT]).choices[0]
    assert first.finish_reason == "tool_calls"
    (call,) = first.message.tool_calls
    assert call.function.name == "convert" and json.loads(call.function.arguments) == {
        "value": 5,
        "unit": "km",
    }
    assert first.message.content is None
    assert first.message.model_extra["reasoning_content"] == "I convert."
    result = {"role": "tool", "tool_call_id": call.id, "content": "3.11"}
    second = ask(client, [*QUESTION, first.message.model_dump(exclude_none=True), result], tools=[CONVERT])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == ANSWER and not second.choices[0].message.tool_calls


def test_a_streamed_call_arrives_whole_with_its_finish_reason(client):
    chunks = list(ask(client, QUESTION, tools=[CONVERT], stream=True))
    calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    reasoning = "".join(chunk.choices[0].delta.model_extra.get("reasoning_content") or "" for chunk in chunks)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("convert", {"value": 5, "unit": "km"})
    ]
    assert reasoning == "I convert." and chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == ""


def test_tool_choice_none_reads_no_call(client):
    choice = ask(client, QUESTION, tools=[CONVERT], tool_choice="none").choices[0]
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls


@pytest.mark.parametrize(
    "tools, options, message",
    [
        ([{"name": "convert"}], {}, 'tools[0] must be {"type": "function"'),
        ([CONVERT], {"tool_choice": {"type": "function", "function": {"name": "weather"}}}, "tool_choice names 'weather'"),
        (None, {"tool_choice": "required"}, "the request has no tools"),
    ],
)  # fmt: skip
def test_malformed_tools_get_a_400_naming_the_key(client, tools, options, message):
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, QUESTION, **({"tools": tools} if tools else {}), **options)
    assert message in error.value.body["message"]


def test_a_call_in_the_history_to_an_unknown_function_is_a_400(client):
    called = {
        "role": "assistant",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
    }
    with pytest.raises(openai.BadRequestError) as error:
        ask(
            client,
            [*QUESTION, called, {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
            tools=[CONVERT],
        )
    assert (
        "messages[1].tool_calls[0] calls 'weather', which is not among the tools"
        in error.value.body["message"]
    )


def test_eval_scores_the_tuned_calls_against_the_base_model(tool_run):
    run_dir, data = tool_run
    result = api.evaluate(run_dir, data=data, baseline=True, generations=1)
    tuned, base = result["tuned"], result["baseline"]
    assert tuned["tool_turns"] == base["tool_turns"] == 2  # the call, then the answer after its result
    assert (
        tuned["tool_name_accuracy"] == tuned["tool_arguments_exact"] == tuned["tool_arguments_valid"] == 100.0
    )
    assert tuned["no_call_accuracy"] == 100.0
    assert tuned["answer_after_tool_accuracy"] == tuned["answer_after_tool_grounded"] == 100.0
    assert base["tool_arguments_exact"] == 0.0 and base["answer_after_tool_accuracy"] == 0.0
    saved = json.loads((Path(result["folder"]) / "evaluation.json").read_text())
    assert (
        saved["tuned"]["tool_arguments_exact"] == 100.0 and saved["baseline"]["tool_arguments_exact"] == 0.0
    )
    assert saved["tool_turns_file"] == "tool_turns.jsonl"
    turns = [
        json.loads(line) for line in (Path(result["folder"]) / "tool_turns.jsonl").read_text().splitlines()
    ]
    assert [(t["functions"], t["after_tool"]) for t in turns] == [(["convert"], False), ([], True)]
    assert turns[1]["reference"] == ANSWER and ANSWER in turns[1]["output"]
    assert turns[1]["base_output"] != turns[1]["output"]


def test_the_served_call_is_what_generate_writes_for_the_same_conversation(tool_run, client):
    from tunesmith.data.tool_output import read_answer
    from tunesmith.evaluation.generation import generate
    from tunesmith.run_folder import RunFolder
    from tunesmith.tasks.generator import load_run

    tuned = load_run(RunFolder.open(tool_run[0]))
    (text,) = generate(
        tuned.model,
        tuned.renderer,
        [(("user", QUESTION[0]["content"]),)],
        160,
        tools=[(json.dumps(CONVERT),)],
    )
    written = read_answer(text)
    served = ask(client, QUESTION, tools=[CONVERT]).choices[0].message
    assert [(c.name, c.arguments_json) for c in written.calls] == [
        (c.function.name, c.function.arguments) for c in served.tool_calls
    ]
    assert written.reasoning == served.model_extra["reasoning_content"]


def request(**body):
    from tunesmith.serving.schemas import ChatRequest

    return ChatRequest.model_validate({"model": "m", "messages": QUESTION, **body})


def test_tool_choice_sets_what_is_rendered_read_and_forced():
    from tunesmith.serving.tool_requests import read_chat

    auto = read_chat(request(tools=[CONVERT]), renders_tools=True)
    assert auto.tools == (json.dumps(CONVERT),) and auto.reads_calls and auto.prefill == ""
    none = read_chat(request(tools=[CONVERT], tool_choice="none"), renders_tools=True)
    assert none.tools == () and not none.reads_calls
    assert read_chat(request(tools=[CONVERT], tool_choice="required"), True).prefill == "<tool_call>\n"
    named = read_chat(
        request(tools=[CONVERT], tool_choice={"type": "function", "function": {"name": "convert"}}), True
    )
    assert named.prefill == '<tool_call>\n{"name": "convert", "arguments": '
    # the model continues after the forced start; the call is read from both together
    from conftest import build_tokenizer
    from test_tool_output import rendered_answer
    from tunesmith.data.conversation import Message, ToolCall
    from tunesmith.data.templates import Renderer
    from tunesmith.serving.tool_requests import whole_message

    only_call = Message("assistant", "", (ToolCall("c1", "convert", '{"value": 5, "unit": "km"}'),))
    written = rendered_answer(Renderer(build_tokenizer(), "tools"), only_call)
    assert written.startswith(named.prefill)
    message = whole_message(named, written.removeprefix(named.prefill), inline_reasoning=False)
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"value": 5, "unit": "km"}']
    from tunesmith.http.context import ApiError

    with pytest.raises(ApiError, match="cannot show tools"):
        read_chat(request(tools=[CONVERT]), renders_tools=False)


def test_streamed_deltas_join_to_the_whole_message():
    from conftest import build_tokenizer
    from test_tool_output import TWO_CALLS, rendered_answer
    from tunesmith.data.templates import Renderer
    from tunesmith.serving.tool_requests import AnswerReader, read_chat, whole_message

    text = rendered_answer(Renderer(build_tokenizer(), "tools"), TWO_CALLS)
    turn = read_chat(request(tools=[CONVERT]), True)
    answer = text
    whole = whole_message(turn, answer, inline_reasoning=False)
    reader = AnswerReader(turn, inline_reasoning=False)
    deltas = [reader.delta(char) for char in answer] + [reader.closing_delta()]
    assert "".join(d.get("content", "") for d in deltas) == (whole["content"] or "")
    assert "".join(d.get("reasoning_content", "") for d in deltas) == whole.get("reasoning_content", "")
    streamed = [
        (c["function"]["name"], c["function"]["arguments"]) for d in deltas for c in d.get("tool_calls", [])
    ]
    assert streamed == [(c["function"]["name"], c["function"]["arguments"]) for c in whole["tool_calls"]]
    assert len(streamed) == 2


def test_reasoning_is_separated_or_kept_inline():
    from tunesmith.serving.tool_requests import ChatTurn, whole_message

    text = "<think>\nShort.\n</think>\n\nYes."
    separate = whole_message(ChatTurn((("user", "Is it?"),)), text, inline_reasoning=False)
    inline = whole_message(ChatTurn((("user", "Is it?"),)), text, inline_reasoning=True)
    assert (separate["content"], separate["reasoning_content"]) == ("Yes.", "Short.")
    assert inline["content"] == text and "reasoning_content" not in inline


def test_the_gguf_export_renders_tool_prompts_with_trainings_ids_in_llama_cpp(tool_run):
    from test_gguf import require_llama_cpp

    require_llama_cpp()
    record = api.export(tool_run[0], "gguf", quantize="f32")
    template = record["checks"]["template"]
    assert template["tool_prompts"] == 16  # 8 conversations: before the call and after the tool's result
    assert template["equal"] == template["equal_in_llama_cpp"] == template["prompts"] + 16
    # Ollama's Go template is checked on plain chats only: the Modelfile, README and record say so
    folder = Path(record["output"])
    assert record["ollama_template"]["tools"] == ollama.TOOLS_NOT_RENDERED
    assert f"# NOTE: {ollama.TOOLS_NOT_RENDERED}" in (folder / "Modelfile").read_text()
    assert ollama.TOOLS_NOT_RENDERED in (folder / "README.md").read_text()
