"""The OpenAI-compatible server, driven by the official openai client over loopback."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from conftest import classification_config, tiny_config, topic_rows, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict

KEY = "test-key-123"


def _adapter_run(folder, model, answer):
    """A LoRA run that learns to answer every prompt with `answer`."""
    folder.mkdir()
    rows = [{"prompt": f"say something {i}", "response": answer} for i in range(16)]
    data = write_jsonl(folder / "answers.jsonl", rows)
    raw = tiny_config(
        folder,
        model,
        4,
        data={"train_file": str(data), "validation_ratio": 0.0},
        method={"name": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        train={
            "max_steps": 60,
            "learning_rate": 1e-2,
            "scheduler": "constant",
            "warmup": 0,
            "save_steps": 60,
            "batch_size": 8,
        },
        eval={"samples": 0, "before_training": False},
        output={"name": folder.name},
    )
    return api.train(config_from_dict(raw))["run_dir"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, tiny_bert):
    root = tmp_path_factory.mktemp("serve")
    cats = _adapter_run(root / "cats", tiny_model, "the cat sat on a mat")
    dogs = _adapter_run(root / "dogs", tiny_model, "dogs ran to the park")
    data = write_jsonl(root / "topics.jsonl", topic_rows(96))
    raw = classification_config(
        root / "topics",
        tiny_bert,
        "text-classification",
        data,
        train={"epochs": 6, "learning_rate": 1e-2, "eval_steps": 1000, "save_steps": 1000},
        output={"name": "topics"},
    )
    topics = api.train(config_from_dict(raw))["run_dir"]
    return cats, dogs, topics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs):
    app = api.serve_app(list(runs), api_key=KEY, max_concurrency=2, max_tokens_cap=16)
    port = _free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    yield app, f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0)


def test_models_and_one_base_for_two_adapters(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["cats", "dogs", "topics"]
    health = httpx.get(server[1] + "/health").json()
    assert health["base_copies_in_memory"] == 1  # cats and dogs are adapters over one tiny base


def test_chat_answers_as_generate_does_and_adapters_differ(runs, client):
    messages = [{"role": "user", "content": "say something new"}]
    cats = client.chat.completions.create(model="cats", messages=messages, max_tokens=8)
    dogs = client.chat.completions.create(model="dogs", messages=messages, max_tokens=8)
    assert (
        cats.choices[0].message.content == api.generate(runs[0], ["say something new"], max_new_tokens=8)[0]
    )
    assert (
        dogs.choices[0].message.content == api.generate(runs[1], ["say something new"], max_new_tokens=8)[0]
    )
    assert cats.choices[0].message.content != dogs.choices[0].message.content
    assert "cat" in cats.choices[0].message.content and "dogs" in dogs.choices[0].message.content
    assert cats.usage.prompt_tokens > 0 and cats.usage.completion_tokens > 0


def test_streamed_chat_joins_to_the_same_answer(client):
    messages = [{"role": "user", "content": "say something new"}]
    whole = (
        client.chat.completions.create(model="dogs", messages=messages, max_tokens=8)
        .choices[0]
        .message.content
    )
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="dogs", messages=messages, max_tokens=8, stream=True
        )
    ]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == whole


def test_completions_endpoint(client):
    answer = client.completions.create(model="cats", prompt="say something", max_tokens=8)
    assert "cat" in answer.choices[0].text


def test_errors_are_openai_shaped(server, client):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="above this server's cap of 16"):
        client.chat.completions.create(
            model="cats", messages=[{"role": "user", "content": "hi"}], max_tokens=99
        )
    with pytest.raises(openai.BadRequestError, match="the prompt is empty"):
        client.chat.completions.create(model="cats", messages=[{"role": "user", "content": "  "}])
    with pytest.raises(openai.BadRequestError, match="use /v1/classify"):
        client.chat.completions.create(model="topics", messages=[{"role": "user", "content": "hi"}])
    wrong = openai.OpenAI(base_url=server[1] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    bad = httpx.post(
        server[1] + "/v1/chat/completions", json={"model": 3}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_classify_answers_as_predict_does(server, runs, tmp_path):
    texts = ["market shares rose", "team won match"]
    response = httpx.post(
        server[1] + "/v1/classify",
        json={"model": "topics", "input": texts},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200
    data = response.json()["data"]
    predicted = api.predict(runs[2], write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts]))
    expected = [json.loads(line) for line in Path(predicted["output"]).read_text().splitlines()]
    assert [d["label"] for d in data] == [e["label"] for e in expected] == ["business", "sport"]
    assert data[0]["probabilities"] == pytest.approx(expected[0]["probabilities"], abs=1e-5)


def test_concurrency_limit_answers_429_and_metrics_count_it(server):
    body = {"model": "cats", "messages": [{"role": "user", "content": "say something"}], "max_tokens": 16}
    headers = {"Authorization": f"Bearer {KEY}"}
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: (
                    httpx.post(
                        server[1] + "/v1/chat/completions", json=body, headers=headers, timeout=60
                    ).status_code
                ),
                range(8),
            )
        )
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes
    text = httpx.get(server[1] + "/metrics").text
    assert 'tunesmith_requests_total{path="/v1/chat/completions",status="429"}' in text


def test_openapi_fuzz_finds_no_server_error(server):
    import hypothesis
    import schemathesis

    app = server[0]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.settings(
            max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck), database=None
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {KEY}"}
            response = case.call()
            if response.status_code >= 500:
                failures.append((case.operation.label, response.status_code, case.body))

        check()
    assert not failures, failures[:3]


def test_a_client_hanging_up_mid_stream_frees_the_model(server, client):
    body = {
        "model": "cats",
        "messages": [{"role": "user", "content": "say something"}],
        "max_tokens": 16,
        "stream": True,
    }
    with httpx.stream(
        "POST", server[1] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        next(response.iter_lines())  # read one event, then hang up
    answer = client.chat.completions.create(
        model="dogs", messages=[{"role": "user", "content": "say something"}], max_tokens=8
    )
    assert "dogs" in answer.choices[0].message.content  # the shared base's lock was released
