"""Request bodies of the OpenAI-compatible chat and completions routes (the subset tunesmith serves); the error
body is in tunesmith.http.schemas, and a task's own routes keep their request bodies in its package.

Sizes (messages, characters) are capped by the routes against the server's Limits, with messages that name the
cap; the raw body is capped before it is parsed (FastAPI's max_body_size)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FunctionCall(BaseModel):
    name: str
    arguments: str | dict[str, Any]  # OpenAI sends JSON text; an object is read too


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None  # null on an assistant turn that only calls tools
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (n=1, top_p, ...)
    model: str
    messages: list[Message] = Field(min_length=1)
    # function definitions and the choice among them, as OpenAI's; checked as training data is (data/tool_rows.py)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    stream: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    prompt: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    stream: bool = False
