"""What a finished run is, as code outside its task asks it: `Task.load_run` returns a typed handle, and callers
ask `isinstance(handle, Generator)`, never guess by attributes.

`Generator` is here because several tasks' runs are one (causal LM, preference, seq2seq) and the server's shared
chat/completions routes answer through it. A handle only its own task's route asks (a labeller, a transcriber, a
tagger) is declared beside that route, as its module's HANDLE (tasks/<name>/routes.py)."""

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
