"""Routes for models that tag words: /v1/entities (one text or a list) -> each text's entities as character spans."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from tunesmith.serving.context import ServingContext, input_texts
from tunesmith.serving.schemas import EntitiesRequest, ErrorResponse

GROUP = "entities"
PATHS = ("/v1/entities",)
RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429)}


def add_routes(app: FastAPI, context: ServingContext) -> None:
    limits, registry = context.limits, context.registry

    @app.post("/v1/entities", responses=RESPONSES)
    async def entities(body: EntitiesRequest):
        model = context.model(body.model, GROUP)
        texts = input_texts(body.input, limits)
        found = await run_in_threadpool(registry.tag, model, texts)
        return {
            "object": "list",
            "model": model.id,
            "data": [{"index": i, "entities": spans} for i, spans in enumerate(found)],
        }
