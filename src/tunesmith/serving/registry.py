"""The served models: runs loaded once; LoRA runs over the same base share one copy of it in memory."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from tunesmith.errors import TunesmithError
from tunesmith.http.context import ServedModel
from tunesmith.registry import get_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.handles import Generator

if TYPE_CHECKING:
    from tunesmith.evaluation.generation import Cancellation


def _model_id(run: RunFolder, taken: set[str]) -> str:
    name = run.path.name
    candidates = [name] + [f"{name}-{n}" for n in range(2, 1000)]
    return next(c for c in candidates if c not in taken)


class Registry:
    def __init__(self, run_dirs: list[str | Path]):
        if not run_dirs:
            raise TunesmithError("serve: give at least one run folder")
        self.models: dict[str, ServedModel] = {}
        self.bases: dict[
            str, object
        ] = {}  # base model path|model.quantization -> the PeftModel holding that base and its adapters
        self.locks: dict[int, threading.Lock] = {}
        for run_dir in run_dirs:
            run = RunFolder.open(run_dir)
            summary = run.read_summary()
            if summary.status != "finished":
                raise TunesmithError(
                    f"serve: {run.path} has not finished training (status: {summary.status})"
                )
            model_id = _model_id(run, set(self.models))
            self.models[model_id] = self._load(model_id, run, summary)

    def _load(self, model_id: str, run: RunFolder, summary: dict) -> ServedModel:
        """The run as its Task loads it; a language model's adapter joins a base already in memory."""
        cfg = run.load_config()
        task = get_task(cfg.task)
        # an 8-bit base and the same base in float are different weights in memory: adapters share only like with like
        base_key = f"{summary.base_model_path}|{cfg.model.quantization}"
        shared = self.bases.get(base_key) if summary.is_adapter else None
        loaded = task.load_run(run, adapter_name=model_id, into=shared)
        served = ServedModel(model_id, task.name, run, routes=task.routes(), handle=loaded)
        if not isinstance(loaded, Generator):  # labellers, transcribers, taggers answer through their handle
            return served
        served.model, served.renderer = loaded.model, loaded.renderer
        served.system_prompt = loaded.cfg.data.system_prompt
        served.adapter = model_id if summary.is_adapter else None
        if served.adapter and shared is None:
            self.bases[base_key] = loaded.model
        served.lock = self.locks.setdefault(id(loaded.model), served.lock)  # adapters over one base share it
        return served

    def get(self, model_id: str) -> ServedModel | None:
        return self.models.get(model_id)

    def count_base_copies(self) -> int:
        """How many distinct causal-LM weight sets are in memory (one per base, however many adapters)."""
        return len({id(m.model) for m in self.models.values() if m.renderer is not None})

    # -- inference (called from worker threads; each model's lock serializes its use) ----------------

    def conversation(self, served: ServedModel, messages: list):
        system = (
            [("system", served.system_prompt)] if served.system_prompt and messages[0][0] != "system" else []
        )
        return (*system, *messages)

    def prompt_tokens(self, served: ServedModel, messages, tools: tuple = (), prefill: str = "") -> int:
        conversation = self.conversation(served, messages)
        if tools or prefill:
            return len(served.renderer.encode_prompt(conversation, tools, prefill))
        return len(served.renderer.encode_prompt(conversation))

    def stream(
        self, served: ServedModel, messages, max_tokens: int, temperature: float, tools=(), prefill: str = ""
    ) -> Streaming:
        """Start generating the answer on a producer thread; its pieces arrive on the caller's event loop."""
        from tunesmith.evaluation.generation import stream

        conversation = self.conversation(served, messages)

        def pieces(cancellation):
            with served.lock:  # held for exactly one generation, which cancel() ends after the current token
                if cancellation.cancelled:  # the client left while this waited for the model
                    return
                self._select(served)
                yield from stream(
                    served.model,
                    served.renderer,
                    conversation,
                    max_tokens,
                    temperature,
                    cancellation,
                    tools,
                    prefill,
                )

        return Streaming(pieces)

    @staticmethod
    def _select(served: ServedModel) -> None:
        if served.adapter is not None and served.model.active_adapter != served.adapter:
            served.model.set_adapter(served.adapter)


class Streaming:
    """One streamed generation: a producer thread hands its pieces to the event loop through an asyncio queue,
    so the consumer can stop waiting at once; stop() cancels the generation and waits until the model is free."""

    def __init__(self, pieces: Callable[[Cancellation], Iterator[str]]):
        from tunesmith.evaluation.generation import Cancellation

        self.cancellation = Cancellation()
        self.finished = False  # every piece was handed over
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._producer = threading.Thread(target=self._produce, args=(pieces,), daemon=True)
        self._producer.start()

    def _produce(self, pieces: Callable[[Cancellation], Iterator[str]]) -> None:
        end: object = None
        try:
            for piece in pieces(self.cancellation):
                self._loop.call_soon_threadsafe(self._queue.put_nowait, piece)
        except Exception as error:  # handed to the consumer, which raises it
            end = error
        finally:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, end)

    async def __aiter__(self) -> AsyncIterator[str]:
        while (piece := await self._queue.get()) is not None:
            if isinstance(piece, Exception):
                raise piece
            yield piece
        self.finished = True

    @property
    def new_tokens(self) -> int:
        return self.cancellation.new_tokens

    async def stop(self) -> bool:
        """Cancel the generation (a no-op when it has finished), wait until it has let go of the model, and say
        whether it was cut short."""
        cut_short = not self.finished
        self.cancellation.cancel()
        await run_in_threadpool(self._producer.join)
        return cut_short
