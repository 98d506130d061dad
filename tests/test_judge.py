"""The pairwise judge: both orders, position bias cancelled, any OpenAI-compatible server or a run folder."""

import json
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.judge import Judge, combine, compare_pairs, parse_verdict

RECORDS = [
    {"where": "t:1", "prompt": "p1", "reference": "r", "output": "a good answer", "base_output": "meh"},
    {"where": "t:2", "prompt": "p2", "reference": "r", "output": "meh", "base_output": "a good answer"},
    {"where": "t:3", "prompt": "p3", "reference": "r", "output": "meh", "base_output": "meh too"},
]


def answers_in(messages: list[dict]) -> tuple[str, str]:
    content = messages[-1]["content"]
    first = content.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
    second = content.split("Answer B:\n")[1].split("\n\nWhich answer")[0]
    return first, second


def prefers_good(messages: list[dict]) -> str:
    first, second = answers_in(messages)
    return "A" if "good" in first else "B." if "good" in second else "Tie"


def test_verdicts_are_read_from_the_start_of_the_reply():
    assert [parse_verdict(r) for r in ("A", " b.", "Tie", "Answer B is better", "**A**")] == [
        "A",
        "B",
        "tie",
        "B",
        "A",
    ]
    assert parse_verdict("I think the first") is None and parse_verdict("Absolutely") is None
    assert combine("win", "win") == "win" and combine("loss", "loss") == "loss"
    assert combine("win", "loss") == combine("win", "tie") == combine(None, "win") == "tie"


def test_a_judge_that_always_says_a_gives_only_ties():
    result = compare_pairs(Judge("biased", lambda messages: "A"), RECORDS)
    assert (result["win"], result["tie"], result["loss"]) == (0, 3, 0) and result["inconsistent"] == 3


def test_a_consistent_judge_is_counted_pair_by_pair():
    result = compare_pairs(Judge("fair", prefers_good), RECORDS)
    assert [v["outcome"] for v in result["verdicts"]] == ["win", "loss", "tie"]
    assert (result["win"], result["tie"], result["loss"], result["win_rate"]) == (1, 1, 1, round(1 / 3, 4))
    assert result["inconsistent"] == 0 and result["unreadable_replies"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(request):
    servers = []

    def start(app) -> str:
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.should_exit = True


def longer_answer_judge() -> FastAPI:
    """An OpenAI-compatible judge that prefers the longer answer (ties on equal length)."""
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "longer-wins", "object": "model"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        first, second = answers_in(body["messages"])
        verdict = "A" if len(first) > len(second) else "B" if len(second) > len(first) else "tie"
        return {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": verdict}, "finish_reason": "stop"}
            ]
        }

    return app


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory, tiny_model):
    from conftest import tiny_config

    return api.train(config_from_dict(tiny_config(tmp_path_factory.mktemp("judged"), tiny_model)))["run_dir"]


def test_eval_judge_asks_a_server_both_orders_and_records_each_verdict(tuned_run, serve):
    url = serve(longer_answer_judge())
    result = api.evaluate(tuned_run, generations=4, judge=url)
    folder = Path(result["folder"])
    generations = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    expected = [
        "win"
        if len(g["output"]) > len(g["base_output"])
        else "loss"
        if len(g["base_output"]) > len(g["output"])
        else "tie"
        for g in generations
    ]
    judged = result["judge"]
    assert judged["judge"] == f"longer-wins at {url}/v1" and judged["pairs"] == len(generations) == 4
    assert (judged["win"], judged["tie"], judged["loss"]) == tuple(
        expected.count(k) for k in ("win", "tie", "loss")
    )
    verdicts = json.loads((folder / "judge.json").read_text())["verdicts"]
    assert [v["outcome"] for v in verdicts] == expected and result["baseline"] is not None  # base scored too
    assert json.loads((folder / "evaluation.json").read_text())["judge"]["verdicts_file"] == "judge.json"


def test_tunesmith_serve_and_a_run_folder_can_judge(tuned_run, serve):
    url = serve(api.serve_app([tuned_run]))
    served = api.evaluate(tuned_run, generations=2, judge=url)
    local = api.evaluate(tuned_run, generations=2, judge=tuned_run)
    by_server, in_process = served["judge"], local["judge"]
    for judged in (by_server, in_process):
        assert judged["pairs"] == 2 and judged["win"] + judged["tie"] + judged["loss"] == 2
    assert by_server["judge"].endswith(f"at {url}/v1") and in_process["judge"] == f"run {tuned_run}"

    # the same greedy model asked the same questions, over HTTP or in this process, replies the same words
    def replies(result):
        verdicts = json.loads((Path(result["folder"]) / "judge.json").read_text())["verdicts"]
        return [v[order]["reply"] for v in verdicts for order in ("tuned_first", "base_first")]

    assert replies(served) == replies(local) and len(replies(local)) == 4


def test_a_judge_address_that_answers_nothing_is_one_clear_line(tuned_run):
    with pytest.raises(
        TunesmithError, match=r"--judge http://127.0.0.1:\d+: cannot reach an OpenAI-compatible server"
    ):
        api.evaluate(tuned_run, generations=2, judge=f"http://127.0.0.1:{_free_port()}")
