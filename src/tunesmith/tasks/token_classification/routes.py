"""The route for taggers: /v1/entities (one text or a list) -> each text's entities as character spans."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from fastapi import FastAPI

from tunesmith.http.context import ServedModel, ServingContext, answer_each_text
from tunesmith.http.schemas import ERROR_RESPONSES, TextsRequest

GROUP = "entities"
PATHS = ("/v1/entities",)


@runtime_checkable
class Tagger(Protocol):
    """A finished token-classification run: text in, its entities out as character spans."""

    labels: list[str]

    def entities(self, texts: list[str], batch_size: int = 32) -> list[list[dict]]: ...


HANDLE = Tagger  # what the server checks a run's handle against when it loads it


class EntitiesRequest(TextsRequest):
    """/v1/entities: each text's entities."""


def tagged(served: ServedModel, texts: list[str]) -> list[dict]:
    """Each text's entities as character spans."""
    tagger: Tagger = served.handle
    with served.lock:
        return [{"entities": spans} for spans in tagger.entities(texts)]


def add_routes(app: FastAPI, context: ServingContext) -> None:
    @app.post("/v1/entities", responses=ERROR_RESPONSES)
    async def entities(body: EntitiesRequest):
        return await answer_each_text(context, GROUP, body.model, body.input, tagged)
