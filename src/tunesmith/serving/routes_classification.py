"""Routes for models that label text: /v1/classify (one text or a list) -> label and probabilities per text."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from tunesmith.serving.context import ServingContext, input_texts
from tunesmith.serving.schemas import ClassifyRequest, ErrorResponse

GROUP = "classification"
PATHS = ("/v1/classify",)
RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429)}


def add_routes(app: FastAPI, context: ServingContext) -> None:
    limits, registry = context.limits, context.registry

    @app.post("/v1/classify", responses=RESPONSES)
    async def classify(body: ClassifyRequest):
        model = context.model(body.model, GROUP)
        texts = input_texts(body.input, limits)
        results = await run_in_threadpool(registry.classify, model, texts)
        return {
            "object": "list",
            "model": model.id,
            "data": [{"index": i, **r} for i, r in enumerate(results)],
        }
