"""The route for text classifiers: /v1/classify (one text or a list) -> label and probabilities per text."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from fastapi import FastAPI

from tunesmith.http.context import ServedModel, ServingContext, answer_each_text
from tunesmith.http.schemas import ERROR_RESPONSES, TextsRequest

GROUP = "classification"
PATHS = ("/v1/classify",)


@runtime_checkable
class Labeller(Protocol):
    """A finished classification run: inputs in, a label (or several) per input with its probabilities."""

    labels: list[str]
    multi_label: bool

    def logits(self, examples: list, batch_size: int, progress: bool = True) -> Any: ...


HANDLE = Labeller  # what the server checks a run's handle against when it loads it


class ClassifyRequest(TextsRequest):
    """/v1/classify: each text's label."""


def classified(served: ServedModel, texts: list[str]) -> list[dict]:
    """Each text's label (a list of them for a multi-label run) and every label's probability."""
    from tunesmith.data.labelled import LabelledExample
    from tunesmith.tasks.classification.metrics import predicted, probabilities

    classifier: Labeller = served.handle
    examples = [LabelledExample(f"input:{i}", (), text=t) for i, t in enumerate(texts)]
    with served.lock:
        probs = probabilities(classifier.logits(examples, 16, progress=False), classifier.multi_label)
    picks = predicted(probs, classifier.multi_label)
    names = classifier.labels
    results = []
    for row, pick in zip(probs, picks, strict=True):
        label = [names[i] for i in np.flatnonzero(pick)] if classifier.multi_label else names[int(pick)]
        results.append(
            {
                "label": label,
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, row, strict=True)},
            }
        )
    return results


def add_routes(app: FastAPI, context: ServingContext) -> None:
    @app.post("/v1/classify", responses=ERROR_RESPONSES)
    async def classify(body: ClassifyRequest):
        return await answer_each_text(context, GROUP, body.model, body.input, classified)
