"""What every route group shares: the served models, the input caps, the metrics, and OpenAI-shaped errors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Protocol

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.concurrency import run_in_threadpool

from tunesmith.run_folder import RunFolder

ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """A request the server refuses: answered as an OpenAI-shaped error with this status."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(
    status: int, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": ERRORS.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": None,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass(frozen=True)
class Limits:
    """How much one request may ask of the server; anything beyond gets a 400 (or 413 for the raw body)."""

    max_concurrency: int = 4  # requests holding a slot (streams until their last byte); more get 429
    max_tokens: int = 512  # the largest max_tokens a request may ask for
    max_prompt_tokens: int = 2048
    max_messages: int = 256
    max_message_chars: int = 100_000  # per message (chat), per prompt (completions), per text (classify)
    max_total_chars: int = 200_000  # all messages of one chat request, all texts of one classify request
    max_texts: int = 64  # texts in one /v1/classify request
    max_body_bytes: int = 4 * 1024 * 1024  # the raw JSON body, refused before it is parsed


@dataclass
class Metrics:
    """Prometheus series; every label takes a bounded set of values (route templates, status codes, ids)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("tunesmith_requests", "HTTP requests", ["path", "status"], registry=r)
        self.latency = Histogram(
            "tunesmith_request_seconds", "request latency to the last byte", ["path"], registry=r
        )
        self.in_flight = Gauge("tunesmith_in_flight", "requests holding a concurrency slot", registry=r)
        self.unauthorized = Counter(
            "tunesmith_unauthorized_requests", "requests refused for a missing or wrong API key", registry=r
        )
        self.generated = Counter(
            "tunesmith_generated_tokens",
            "tokens generated, streamed or not, EOS included",
            ["model"],
            registry=r,
        )
        self.abandoned = Counter(
            "tunesmith_abandoned_generations",
            "generations stopped early because the client hung up (streamed or not)",
            ["model"],
            registry=r,
        )


@dataclass
class ServedModel:
    """One run the server answers for, under its model id."""

    id: str
    task: str
    run: RunFolder
    routes: ModuleType | None = None  # the task's own route module (Task.routes()), when it has one
    model: object = None  # a PeftModel holding several adapters, or a plain model
    adapter: str | None = None  # which adapter of `model` answers for this id
    renderer: object = None  # a Generator's template (the one `tunesmith generate` uses)
    system_prompt: str | None = None
    handle: object = None  # the run as its Task loads it: a Generator, or the HANDLE its routes declare
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request at a time per weights


class Models(Protocol):
    """The served models by id (tunesmith.serving.registry.Registry)."""

    models: dict[str, ServedModel]

    def get(self, model_id: str) -> ServedModel | None: ...


@dataclass
class ServingContext:
    """Handed to each route group's add_routes: the models, which route group answers for each, caps, metrics."""

    registry: Models  # the server's Registry (serving's own routes also ask it to generate)
    route_groups: dict[str, str | None]  # model id -> its route group (None: no HTTP route answers for it)
    group_paths: dict[str, tuple[str, ...]]  # route group -> its paths, for "use ... instead" messages
    limits: Limits
    metrics: Metrics
    reasoning: str = "separate"  # a chat answer's <think> block: in reasoning_content, or "inline" in content

    def model(self, model_id: str, group: str) -> ServedModel:
        """The served model `model_id`, if this route group answers for it; else a 404 or a 400 naming the routes."""
        served = self.registry.get(model_id)
        if served is None:
            raise ApiError(404, f"model '{model_id}' is not served here; GET /v1/models lists them", "model")
        own = self.route_groups.get(model_id)
        if own != group:
            if own is None:
                message = (
                    f"model '{model_id}' is a {served.task} model, which no route of this server answers for"
                )
            else:
                message = (
                    f"model '{model_id}' is a {served.task} model; use {' or '.join(self.group_paths[own])}"
                )
            raise ApiError(400, message, "model")
        return served


def check_text_sizes(texts: dict[str, str], limits: Limits, param: str, unit: str) -> None:
    """A 400 naming the first text (by where it is in the request) above the per-text cap, or the total above
    the per-request cap; both are checked before any rendering or tokenizing."""
    for where, text in texts.items():
        if len(text) > limits.max_message_chars:
            raise ApiError(
                400,
                f"{where} is {len(text)} characters, above this server's limit of "
                f"{limits.max_message_chars} characters per {unit}",
                param,
            )
    total = sum(len(text) for text in texts.values())
    if total > limits.max_total_chars:
        raise ApiError(
            400,
            f"{param} add up to {total} characters, above this server's limit of "
            f"{limits.max_total_chars} characters per request",
            param,
        )


def input_texts(value: str | list[str], limits: Limits) -> list[str]:
    """A request's `input` (one text or a list) as a list, each text checked: 1 to limits.max_texts texts, none
    empty, none above the size caps; else a 400 naming the text."""
    texts = [value] if isinstance(value, str) else value
    if not texts or len(texts) > limits.max_texts:
        raise ApiError(
            400, f"input: give 1 to {limits.max_texts} texts (this request has {len(texts)})", "input"
        )
    if empty := [i for i, t in enumerate(texts) if not t.strip()]:
        raise ApiError(400, f"input[{empty[0]}] is empty", "input")
    check_text_sizes({f"input[{i}]": t for i, t in enumerate(texts)}, limits, "input", "text")
    return texts


async def answer_each_text(
    context: ServingContext, group: str, model_id: str, value: str | list[str], answer: Callable
) -> dict:
    """The answer of a route that takes one text or a list (/v1/classify, /v1/entities): the model checked for
    `group`, the texts checked (input_texts), `answer(model, texts)` run off the event loop (a dict per text), and
    {"object": "list", "model", "data": [{"index": i, **that text's dict}]}."""
    model = context.model(model_id, group)
    texts = input_texts(value, context.limits)
    results = await run_in_threadpool(answer, model, texts)
    return {"object": "list", "model": model.id, "data": [{"index": i, **r} for i, r in enumerate(results)]}
