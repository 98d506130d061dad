"""The server under abuse: streams hold their slot to the last byte, hang-ups stop generation, metric labels
stay bounded, oversized inputs get a clear 400, tokenizing stays off the event loop, every route checks the key."""

import asyncio
import json
import re
import socket
import threading
import time
import uuid

import httpx
import pytest
import uvicorn

from conftest import classification_config, tiny_config, topic_rows, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.http.context import Limits
from tunesmith.serving.app import OPEN_PATHS, create_app
from tunesmith.serving.registry import Registry

KEY = "limits-key-456"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = (
    600  # tokens a stream may ask for: the barely trained tiny model never says EOS, so it would run them all
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, tiny_bert):
    root = tmp_path_factory.mktemp("limits")
    (root / "babble").mkdir()
    raw = tiny_config(
        root / "babble",
        tiny_model,
        16,
        data={"validation_ratio": 0.0},
        train={"max_steps": 1, "save_steps": 1, "eval_steps": 1},
        eval={"samples": 0, "before_training": False},
        output={"name": "babble"},
    )
    babble = api.train(config_from_dict(raw))["run_dir"]
    data = write_jsonl(root / "topics.jsonl", topic_rows(24))
    raw = classification_config(
        root / "topics",
        tiny_bert,
        "text-classification",
        data,
        train={"epochs": 1, "eval_steps": 1000, "save_steps": 1000},
        output={"name": "topics"},
    )
    topics = api.train(config_from_dict(raw))["run_dir"]
    return babble, topics


@pytest.fixture(scope="module")
def server(runs):
    limits = Limits(max_concurrency=1, max_tokens=LONG, max_prompt_tokens=256, max_body_bytes=1_000_000)
    registry = Registry(list(runs))
    app = create_app(registry, api_key=KEY, limits=limits)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    yield app, f"http://127.0.0.1:{port}", registry
    instance.should_exit = True
    thread.join(timeout=10)


def chat(base, content="say something", timeout=30, **fields):
    body = {"model": "babble", "messages": [{"role": "user", "content": content}], "max_tokens": 1, **fields}
    return httpx.post(base + "/v1/chat/completions", json=body, headers=AUTH, timeout=timeout)


def metric(base: str, name: str, **labels) -> float:
    """One sample of /metrics (0 when the series does not exist yet)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(f"{name}{{{wanted}}}" if labels else name) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, httpx.get(base + "/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for(condition, seconds: float = 20) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_stream_holds_its_slot_until_its_last_byte_and_a_hang_up_stops_generating(server):
    base = server[1]
    tokens_before = metric(base, "tunesmith_generated_tokens_total", model="babble")
    # "hi" starts a loop of short words: pieces flow at once and no EOS comes within LONG tokens
    body = {
        "model": "babble",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": LONG,
        "stream": True,
    }
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=AUTH, timeout=60) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()  # kept referenced: dropping a half-read iterator closes the connection
        assert next(lines).startswith("data: ")
        # Mid-body, the stream still holds the only slot: the next request is refused at once, not queued
        # behind the model lock (the old server freed the slot as soon as the response object was returned).
        refused = chat(base, timeout=10)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert metric(base, "tunesmith_in_flight") == 1
    # The client hung up: generation stops after the current token, frees the model and the slot.
    assert wait_for(lambda: metric(base, "tunesmith_abandoned_generations_total", model="babble") == 1)
    generated = metric(base, "tunesmith_generated_tokens_total", model="babble") - tokens_before
    assert 1 <= generated < LONG / 4, generated
    assert wait_for(lambda: metric(base, "tunesmith_in_flight") == 0)
    started = time.perf_counter()
    after = chat(base, timeout=10)
    assert after.status_code == 200 and time.perf_counter() - started < 5  # no stuck lock


def test_a_stream_read_to_the_end_runs_its_tokens_and_frees_the_slot(server):
    base = server[1]
    tokens_before = metric(base, "tunesmith_generated_tokens_total", model="babble")
    abandoned_before = metric(base, "tunesmith_abandoned_generations_total", model="babble")
    lines = []
    body = {
        "model": "babble",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 24,
        "stream": True,
    }
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=AUTH, timeout=60) as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and '"finish_reason": "length"' in lines[-2]
    assert metric(base, "tunesmith_generated_tokens_total", model="babble") - tokens_before == 24
    # read to the end: not abandoned (whatever other tests on this server abandoned before, in any order)
    assert metric(base, "tunesmith_abandoned_generations_total", model="babble") == abandoned_before
    assert chat(base).status_code == 200


def test_a_client_leaving_before_its_whole_answer_stops_that_generation(server):
    base = server[1]
    tokens_before = metric(base, "tunesmith_generated_tokens_total", model="babble")
    abandoned_before = metric(base, "tunesmith_abandoned_generations_total", model="babble")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        chat(base, content="hi", max_tokens=LONG, timeout=0.5)
    assert wait_for(
        lambda: metric(base, "tunesmith_abandoned_generations_total", model="babble") == abandoned_before + 1
    )
    generated = metric(base, "tunesmith_generated_tokens_total", model="babble") - tokens_before
    assert 1 <= generated < LONG / 2, generated
    assert wait_for(lambda: metric(base, "tunesmith_in_flight") == 0)
    status_499 = metric(base, "tunesmith_requests_total", path="/v1/chat/completions", status="499")
    assert status_499 == 1 and chat(base).status_code == 200


def test_metric_labels_are_route_templates_and_unauthenticated_requests_add_no_series(server):
    base = server[1]
    assert chat(base).status_code == 200
    missing = httpx.get(f"{base}/no-such-{uuid.uuid4().hex}", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"

    def series() -> set[str]:
        lines = httpx.get(base + "/metrics").text.splitlines()
        return {line.rsplit(" ", 1)[0] for line in lines if line and not line.startswith("#")}

    before = series()
    for _ in range(20):
        random_path = f"/v1/{uuid.uuid4().hex}"
        assert httpx.post(base + random_path, json={}).status_code == 401
        assert (
            httpx.get(base + f"/{uuid.uuid4().hex}", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
    assert series() == before  # no new label values
    assert metric(base, "tunesmith_unauthorized_requests_total") >= 40
    templates = {route.path for route in server[0].routes} | {"unmatched"}
    labels = set(re.findall(r'path="([^"]*)"', httpx.get(base + "/metrics").text))
    assert labels <= templates and {"/v1/chat/completions", "unmatched"} <= labels


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}] * 257},
            "messages has 257 messages, above this server's limit of 256",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a" * 100_001}]},
            "messages[0].content is 100001 characters, above this server's limit of 100000 characters per message",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a " * 45_000}] * 3},
            "messages add up to 270000 characters, above this server's limit of 200000 characters per request",
        ),
        (
            "/v1/completions",
            {"prompt": "b" * 100_001},
            "prompt is 100001 characters, above this server's limit of 100000 characters per prompt",
        ),
        (
            "/v1/classify",
            {"model": "topics", "input": ["team won"] * 65},
            "input: give 1 to 64 texts (this request has 65)",
        ),
        (
            "/v1/classify",
            {"model": "topics", "input": ["team won", "c" * 100_001]},
            "input[1] is 100001 characters, above this server's limit of 100000 characters per text",
        ),
        (
            "/v1/classify",
            {"model": "topics", "input": ["d " * 40_000] * 3},
            "input add up to 240000 characters, above this server's limit of 200000 characters per request",
        ),
    ],
)
def test_oversized_inputs_get_a_400_that_names_the_cap(server, path, body, message):
    response = httpx.post(server[1] + path, json={"model": "babble", **body}, headers=AUTH, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] == message and error["type"] == "invalid_request_error"


def test_a_body_above_the_byte_cap_gets_413_declared_or_chunked(server):
    expected = "the request body is above this server's limit of 1000000 bytes"
    declared = chat(server[1], content="x" * 1_000_001)  # Content-Length: refused before it is read
    assert declared.status_code == 413 and declared.json()["error"]["message"] == expected
    body = json.dumps(
        {"model": "babble", "messages": [{"role": "user", "content": "y" * 1_000_001}]}
    ).encode()
    pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))  # no Content-Length: chunked
    chunked = httpx.post(server[1] + "/v1/chat/completions", content=pieces, headers=AUTH, timeout=30)
    assert chunked.status_code == 413 and chunked.json()["error"]["message"] == expected


def test_rendering_and_tokenizing_run_off_the_event_loop(server, monkeypatch):
    registry = server[2]
    calls = []
    original = registry.prompt_tokens

    def spy(served, messages, *tools_and_prefill):
        try:
            asyncio.get_running_loop()
            calls.append("event loop")
        except RuntimeError:
            calls.append("worker thread")
        return original(served, messages, *tools_and_prefill)

    monkeypatch.setattr(registry, "prompt_tokens", spy)
    assert chat(server[1]).status_code == 200
    assert chat(server[1], stream=True).status_code == 200
    assert calls == ["worker thread", "worker thread"]


def test_every_route_but_the_open_ones_answers_401_without_the_key(server):
    app, base, _ = server
    checked = []
    for route in app.routes:
        if route.path in OPEN_PATHS:
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            response = httpx.request(method, base + route.path, json={})
            assert response.status_code == 401, (method, route.path, response.status_code)
            if method != "HEAD":
                assert response.json()["error"]["type"] == "authentication_error"
            checked.append(route.path)
    assert {"/v1/chat/completions", "/v1/completions", "/v1/classify", "/v1/models"} <= set(checked)
    open_paths = {route.path for route in app.routes if route.path in OPEN_PATHS}
    assert open_paths == {"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    assert httpx.get(base + "/health").status_code == 200
