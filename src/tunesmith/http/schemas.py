"""Bodies several routes share: OpenAI's error shape (every model route lists it in its OpenAPI responses) and the
request of a route that takes one text or a list."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TextsRequest(BaseModel):
    """One text or a list of texts for a model (a route answers it with context.answer_each_text)."""

    model: str
    input: str | list[str] = Field(description="one text or a list of texts")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# The statuses any model route may answer with besides 200: the guard's (401, 413, 429) and the checks' (400, 404).
ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429)}
