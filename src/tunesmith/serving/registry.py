"""The served models: runs loaded once; LoRA runs over the same base share one copy of it in memory."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.training.run_folder import RunFolder


@dataclass
class ServedModel:
    id: str
    task: str
    run: RunFolder
    model: object = None  # a PeftModel holding several adapters, or a plain model
    adapter: str | None = None  # which adapter of `model` answers for this id
    renderer: object = None  # causal LM: the run's template (the one `tunesmith generate` uses)
    system_prompt: str | None = None
    classifier: object = None  # classification: a RunClassifier
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request at a time per weights


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
        ] = {}  # base model path -> the PeftModel holding that base and its adapters
        self.locks: dict[int, threading.Lock] = {}
        for run_dir in run_dirs:
            run = RunFolder.open(run_dir)
            summary = run.read_summary()
            if summary.get("status") != "finished":
                raise TunesmithError(
                    f"serve: {run.path} has not finished training (status: {summary.get('status')})"
                )
            model_id = _model_id(run, set(self.models))
            task = run.load_config().task
            self.models[model_id] = (
                self._causal_lm(model_id, run, summary)
                if task == "causal-lm"
                else self._classifier(model_id, run, task)
            )

    def _causal_lm(self, model_id: str, run: RunFolder, summary: dict) -> ServedModel:
        from tunesmith.tasks import causal_lm

        cfg = run.load_config()
        base_path = summary.get("base_model_path")
        shared = self.bases.get(base_path) if summary.get("is_adapter") else None
        if shared is not None:  # another adapter over a base already in memory: load only the adapter
            shared.load_adapter(str(run.model_dir), adapter_name=model_id)
            renderer = causal_lm.load_run_renderer(run)
            model, adapter = shared, model_id
        else:
            model, renderer, _ = causal_lm.load_run_model(run, adapter_name=model_id)
            adapter = model_id if summary.get("is_adapter") else None
            if adapter:
                self.bases[base_path] = model
        served = ServedModel(model_id, "causal-lm", run, model, adapter, renderer, cfg.data.system_prompt)
        served.lock = self.locks.setdefault(id(model), served.lock)  # adapters over one base share its lock
        return served

    def _classifier(self, model_id: str, run: RunFolder, task: str) -> ServedModel:
        from tunesmith.tasks.classification_predict import RunClassifier

        return ServedModel(model_id, task, run, classifier=RunClassifier(run))

    def get(self, model_id: str) -> ServedModel | None:
        return self.models.get(model_id)

    def count_base_copies(self) -> int:
        """How many distinct causal-LM weight sets are in memory (one per base, however many adapters)."""
        return len({id(m.model) for m in self.models.values() if m.task == "causal-lm"})

    # -- inference (called from worker threads; each model's lock serializes its use) ----------------

    def conversation(self, served: ServedModel, messages: list[tuple[str, str]]):
        system = (
            [("system", served.system_prompt)] if served.system_prompt and messages[0][0] != "system" else []
        )
        return (*system, *messages)

    def prompt_tokens(self, served: ServedModel, messages) -> int:
        return len(served.renderer.encode_prompt(self.conversation(served, messages)))

    def complete(self, served: ServedModel, messages, max_tokens: int, temperature: float) -> str:
        from tunesmith.evaluation.generation import generate

        with served.lock:
            self._select(served)
            return generate(
                served.model,
                served.renderer,
                [self.conversation(served, messages)],
                max_tokens,
                1,
                temperature,
            )[0]

    def stream(self, served: ServedModel, messages, max_tokens: int, temperature: float):
        """Pieces of the answer. A producer thread holds the model's lock for exactly one generation, so a
        client that hangs up mid-stream (and never resumes this generator) cannot keep the model locked."""
        from tunesmith.evaluation.generation import stream

        pieces: queue.Queue = queue.Queue()
        conversation = self.conversation(served, messages)

        def produce() -> None:
            try:
                with served.lock:
                    self._select(served)
                    for piece in stream(served.model, served.renderer, conversation, max_tokens, temperature):
                        pieces.put(piece)
            finally:
                pieces.put(None)

        threading.Thread(target=produce, daemon=True).start()
        while (piece := pieces.get()) is not None:
            yield piece

    def classify(self, served: ServedModel, texts: list[str]) -> list[dict]:
        from tunesmith.data.labelled import LabelledExample
        from tunesmith.evaluation.classification import predicted, probabilities

        classifier = served.classifier
        examples = [LabelledExample(f"input:{i}", (), text=t) for i, t in enumerate(texts)]
        with served.lock:
            probs = probabilities(classifier.logits(examples, 16, progress=False), classifier.multi_label)
        picks = predicted(probs, classifier.multi_label)
        results = []
        for row, pick in zip(probs, picks, strict=True):
            names = classifier.labels
            label = [names[i] for i in np.flatnonzero(pick)] if classifier.multi_label else names[int(pick)]
            results.append(
                {
                    "label": label,
                    "probabilities": {n: round(float(p), 6) for n, p in zip(names, row, strict=True)},
                }
            )
        return results

    @staticmethod
    def _select(served: ServedModel) -> None:
        if served.adapter is not None and served.model.active_adapter != served.adapter:
            served.model.set_adapter(served.adapter)
