"""Routes for models that generate text: OpenAI's /v1/chat/completions and /v1/completions, streamed or not.

They answer for every run whose handle is a tunesmith.tasks.handles.Generator (causal LM, preference, seq2seq),
which is why they live here rather than in one task's package (tasks/<name>/routes.py)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from tunesmith.http.context import ApiError, ServedModel, ServingContext, check_text_sizes
from tunesmith.http.schemas import ERROR_RESPONSES
from tunesmith.serving.registry import Streaming
from tunesmith.serving.schemas import ChatRequest, CompletionRequest
from tunesmith.serving.tool_requests import AnswerReader, ChatTurn, read_chat, whole_message
from tunesmith.tasks.handles import Generator

GROUP = "generation"
PATHS = ("/v1/chat/completions", "/v1/completions")
HANDLE = Generator
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer: counted, never read
T = TypeVar("T")


@dataclass
class Answer:
    """What one request asked for, checked: the model, the conversation, and how many tokens it may get."""

    model: ServedModel
    turn: ChatTurn  # the conversation, with its tools and forced start
    budget: int
    temperature: float
    prompt_tokens: int
    kind: str  # "chat" or "completion": the shape of the response objects
    inline_reasoning: bool = False  # serve --reasoning inline: <think> stays in content


class GenerationStream(StreamingResponse):
    """Server-sent events from one generation that is stopped, and waited for, however the response ends:
    after its last byte, or when the client hangs up (Starlette then cancels the body mid-stream)."""

    def __init__(
        self, events: AsyncIterator[str], streaming: Streaming, on_end: Callable[[bool], None]
    ) -> None:
        super().__init__(events, media_type="text/event-stream")
        self.streaming, self.on_end = streaming, on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # finish the clean-up even while being cancelled
                self.on_end(await self.streaming.stop())


def add_routes(app: FastAPI, context: ServingContext) -> None:
    limits, metrics, registry = context.limits, context.metrics, context.registry

    async def checked(
        model: ServedModel, turn: ChatTurn, max_tokens: int | None, temperature: float, kind: str
    ) -> Answer:
        budget = max_tokens or min(256, limits.max_tokens)
        if budget > limits.max_tokens:
            raise ApiError(
                400, f"max_tokens {budget} is above this server's cap of {limits.max_tokens}", "max_tokens"
            )
        if not any(message[1].strip() for message in turn.messages) and not turn.tools:
            raise ApiError(400, "the prompt is empty", "messages")
        # Rendering the template and tokenizing take a while on long inputs: off the event loop.
        length = await run_in_threadpool(
            registry.prompt_tokens, model, turn.messages, turn.tools, turn.prefill
        )
        if length > limits.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt is {length} tokens, above this server's limit of {limits.max_prompt_tokens}",
                "messages",
            )
        return Answer(model, turn, budget, temperature, length, kind, context.reasoning == "inline")

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat(body: ChatRequest, request: Request):
        if len(body.messages) > limits.max_messages:
            raise ApiError(
                400,
                f"messages has {len(body.messages)} messages, above this server's limit of {limits.max_messages}",
                "messages",
            )
        texts = {f"messages[{i}].content": m.content or "" for i, m in enumerate(body.messages)}
        check_text_sizes(texts, limits, "messages", "message")
        model = context.model(body.model, GROUP)
        turn = read_chat(body, getattr(model.renderer, "renders_tools", False))
        max_tokens = body.max_completion_tokens or body.max_tokens
        answer = await checked(model, turn, max_tokens, body.temperature, "chat")
        return await respond(answer, body.stream, request)

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(body: CompletionRequest, request: Request):
        check_text_sizes({"prompt": body.prompt}, limits, "prompt", "prompt")
        # rendered with the run's template, as `tunesmith generate` does
        turn = ChatTurn((("user", body.prompt),))
        model = context.model(body.model, GROUP)
        answer = await checked(model, turn, body.max_tokens, body.temperature, "completion")
        return await respond(answer, body.stream, request)

    async def respond(answer: Answer, stream: bool, request: Request):
        shape = Shape(answer)
        turn = answer.turn
        streaming = registry.stream(
            answer.model, turn.messages, answer.budget, answer.temperature, turn.tools, turn.prefill
        )

        def ended(cut_short: bool) -> None:
            metrics.generated.labels(answer.model.id).inc(streaming.new_tokens)
            if cut_short:
                metrics.abandoned.labels(answer.model.id).inc()

        if not stream:  # the same generation, collected; stopped if the client leaves before it is done
            try:
                pieces = await unless_disconnected(request, collect(streaming))
            finally:
                with anyio.CancelScope(shield=True):
                    ended(await streaming.stop())
            if pieces is None:
                return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; the metrics do
            return shape.whole("".join(pieces), streaming.new_tokens)

        async def events():
            reader = AnswerReader(answer.turn, answer.inline_reasoning)
            async for piece in streaming:
                if answer.kind != "chat":
                    yield shape.event(piece, None)
                elif delta := reader.delta(piece):
                    yield shape.chunk(delta, None)
            if answer.kind == "chat":
                if closing := reader.closing_delta():
                    yield shape.chunk(closing, None)
                yield shape.chunk({}, shape.finish(streaming.new_tokens, "tool_calls" in closing))
            else:
                yield shape.event("", shape.finish(streaming.new_tokens, False))
            yield "data: [DONE]\n\n"

        return GenerationStream(events(), streaming, ended)


async def collect(streaming: Streaming) -> list[str]:
    return [piece async for piece in streaming]


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """The result of `work`, or None if the client hangs up first (`work` is then cancelled).

    Once the body is read, the next ASGI receive() returns only when the client disconnects."""
    result = None
    async with anyio.create_task_group() as group:

        async def run() -> None:
            nonlocal result
            result = await work
            group.cancel_scope.cancel()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(run)
        group.start_soon(watch)
    return result


class Shape:
    """OpenAI's response objects for one answer: a whole chat.completion / text_completion, or its chunks."""

    def __init__(self, answer: Answer):
        self.answer = answer
        prefix = "chatcmpl" if answer.kind == "chat" else "cmpl"
        self.id, self.created = f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time())

    def finish(self, completion_tokens: int, called: bool) -> str:
        if called:
            return "tool_calls"
        return "length" if completion_tokens >= self.answer.budget else "stop"

    def whole(self, text: str, completion_tokens: int) -> dict:
        prompt_tokens = self.answer.prompt_tokens
        if self.answer.kind == "chat":
            message = whole_message(self.answer.turn, text, self.answer.inline_reasoning)
            finish = self.finish(completion_tokens, "tool_calls" in message)
            choice = {"index": 0, "message": message, "finish_reason": finish}
        else:
            finish = self.finish(completion_tokens, False)
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {
            "id": self.id,
            "object": "chat.completion" if self.answer.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.answer.model.id,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def event(self, text: str, finish: str | None) -> str:
        """A text_completion chunk."""
        return self.sse({"index": 0, "text": text, "finish_reason": finish, "logprobs": None})

    def chunk(self, delta: dict, finish: str | None) -> str:
        """A chat.completion.chunk: new content, reasoning_content or tool_calls of the assistant message."""
        return self.sse({"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": finish})

    def sse(self, choice: dict) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.answer.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.answer.model.id,
            "choices": [choice],
        }
        return f"data: {json.dumps(body)}\n\n"
