"""What a finished run is, as the server, the exports and the verbs ask it: small protocols, one per kind of
answer. `Task.load_run` returns one of them; callers ask `isinstance(handle, Tagger)`, never guess by attributes."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Generator(Protocol):
    """Text in, text out (causal LM, seq2seq): `renderer` encodes a prompt exactly as training did."""

    model: Any
    renderer: Any
    cfg: Any

    def answer(
        self, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0
    ) -> list[str]: ...


@runtime_checkable
class Labeller(Protocol):
    """Inputs in, a label (or several) per input with its probabilities (text, image, audio classification)."""

    labels: list[str]
    multi_label: bool

    def logits(self, examples: list, batch_size: int, progress: bool = True) -> Any: ...


@runtime_checkable
class Transcriber(Protocol):
    """Audio in, its transcript out (speech recognition)."""

    window_seconds: float

    def transcribe_clips(self, clips: list, batch_size: int = 8) -> list[str]: ...


@runtime_checkable
class Tagger(Protocol):
    """Text in, its entities out as character spans (token classification)."""

    labels: list[str]

    def entities(self, texts: list[str], batch_size: int = 32) -> list[list[dict]]: ...
