"""The FastAPI app: OpenAI-compatible chat/completions (with streaming), models, classify, health, metrics."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from tunesmith.serving.registry import Registry, ServedModel
from tunesmith.serving.schemas import ChatRequest, ClassifyRequest, CompletionRequest, ErrorResponse

ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
OPEN_PATHS = {"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        self.status, self.message, self.param = status, message, param


def error_response(
    status: int, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": ERRORS.get(status, "invalid_request_error"),
            "param": param,
            "code": None,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(
    registry: Registry,
    api_key: str | None = None,
    max_concurrency: int = 4,
    max_tokens_cap: int = 512,
    max_prompt_tokens: int = 2048,
) -> FastAPI:
    app = FastAPI(title="tunesmith", version="1", description="OpenAI-compatible API over tunesmith runs")
    metrics = CollectorRegistry()
    requests = Counter("tunesmith_requests", "HTTP requests", ["path", "status"], registry=metrics)
    latency = Histogram("tunesmith_request_seconds", "request latency", ["path"], registry=metrics)
    in_flight = Gauge("tunesmith_in_flight", "requests being answered", registry=metrics)
    generated = Counter("tunesmith_generated_tokens", "completion tokens", ["model"], registry=metrics)
    slots = asyncio.Semaphore(max_concurrency)
    responses = {code: {"model": ErrorResponse} for code in (400, 401, 404, 429)}

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(
            400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")), where or None
        )

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        started, path = time.perf_counter(), request.url.path
        if api_key and path not in OPEN_PATHS:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                requests.labels(path, "401").inc()
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        limited = path.startswith("/v1/") and request.method == "POST"
        if limited:
            if slots.locked():  # every slot busy: answer now rather than queue without bound
                requests.labels(path, "429").inc()
                return error_response(
                    429, "too many requests in flight; retry shortly", headers={"Retry-After": "1"}
                )
            await slots.acquire()
            in_flight.inc()
        try:
            response = await call_next(request)
        finally:
            if limited:
                slots.release()
                in_flight.dec()
        requests.labels(path, str(response.status_code)).inc()
        latency.labels(path).observe(time.perf_counter() - started)
        return response

    def served(model_id: str, task: str) -> ServedModel:
        model = registry.get(model_id)
        if model is None:
            raise ApiError(404, f"model '{model_id}' is not served here; GET /v1/models lists them", "model")
        if (model.task == "causal-lm") != (task == "causal-lm"):
            verb = "/v1/chat/completions or /v1/completions" if model.task == "causal-lm" else "/v1/classify"
            raise ApiError(400, f"model '{model_id}' is a {model.task} model; use {verb}", "model")
        return model

    def checked_budget(model: ServedModel, messages, max_tokens: int | None) -> int:
        budget = max_tokens or min(256, max_tokens_cap)
        if budget > max_tokens_cap:
            raise ApiError(
                400, f"max_tokens {budget} is above this server's cap of {max_tokens_cap}", "max_tokens"
            )
        if not any(text.strip() for _, text in messages):
            raise ApiError(400, "the prompt is empty", "messages")
        length = registry.prompt_tokens(model, messages)
        if length > max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt is {length} tokens, above this server's limit of {max_prompt_tokens}",
                "messages",
            )
        return budget

    async def answer(model: ServedModel, messages, budget: int, temperature: float, stream: bool, kind: str):
        created, ident = (
            int(time.time()),
            f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        )
        obj = "chat.completion" if kind == "chat" else "text_completion"
        prompt_tokens = registry.prompt_tokens(model, messages)

        def choice(text: str, finish: str | None, delta: bool = False) -> dict:
            if kind == "chat":
                key = "delta" if delta else "message"
                return {"index": 0, key: {"role": "assistant", "content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

        if not stream:
            text = await run_in_threadpool(registry.complete, model, messages, budget, temperature)
            completion_tokens = len(model.renderer.tokenizer(text, add_special_tokens=False)["input_ids"])
            generated.labels(model.id).inc(completion_tokens)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            finish = "length" if completion_tokens >= budget else "stop"
            return {
                "id": ident,
                "object": obj,
                "created": created,
                "model": model.id,
                "choices": [choice(text, finish)],
                "usage": usage,
            }

        chunk_object = "chat.completion.chunk" if kind == "chat" else "text_completion"

        async def events():
            async for piece in iterate_in_threadpool(registry.stream(model, messages, budget, temperature)):
                body = {
                    "id": ident,
                    "object": chunk_object,
                    "created": created,
                    "model": model.id,
                    "choices": [choice(piece, None, delta=True)],
                }
                yield f"data: {json.dumps(body)}\n\n"
            end = {
                "id": ident,
                "object": chunk_object,
                "created": created,
                "model": model.id,
                "choices": [choice("", "stop", delta=True)],
            }
            yield f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "models": list(registry.models),
            "base_copies_in_memory": registry.count_base_copies(),
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        data = [
            {
                "id": m.id,
                "object": "model",
                "created": int(m.run.summary.stat().st_mtime),
                "owned_by": "tunesmith",
                "task": m.task,
            }
            for m in registry.models.values()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", responses=responses)
    async def chat(body: ChatRequest):
        model = served(body.model, "causal-lm")
        messages = [(m.role, m.content) for m in body.messages]
        if messages[-1][0] != "user":
            raise ApiError(400, "the last message must be the user's", "messages")
        budget = checked_budget(model, messages, body.max_completion_tokens or body.max_tokens)
        return await answer(model, messages, budget, body.temperature, body.stream, "chat")

    @app.post("/v1/completions", responses=responses)
    async def completions(body: CompletionRequest):
        model = served(body.model, "causal-lm")
        messages = [("user", body.prompt)]  # rendered with the run's template, as `tunesmith generate` does
        budget = checked_budget(model, messages, body.max_tokens)
        return await answer(model, messages, budget, body.temperature, body.stream, "completion")

    @app.post("/v1/classify", responses=responses)
    async def classify(body: ClassifyRequest):
        model = served(body.model, "classification")
        if model.task != "text-classification":
            raise ApiError(
                400,
                f"model '{body.model}' classifies {model.task.split('-')[0]}; /v1/classify takes text",
                "model",
            )
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > 64 or any(not t.strip() for t in texts):
            raise ApiError(400, "input: give 1 to 64 non-empty texts", "input")
        results = await run_in_threadpool(registry.classify, model, texts)
        return {
            "object": "list",
            "model": model.id,
            "data": [{"index": i, **r} for i, r in enumerate(results)],
        }

    return app
