"""Tasks, found by the config's `task:` name; each module has validated_data(cfg) and train(cfg, ...)."""

from __future__ import annotations

import importlib
from types import ModuleType

TASKS = {
    "causal-lm": "tunesmith.tasks.causal_lm",
    "text-classification": "tunesmith.tasks.classification",
    "image-classification": "tunesmith.tasks.classification",
    "audio-classification": "tunesmith.tasks.classification",
}


def recipe(task: str) -> ModuleType:
    return importlib.import_module(TASKS[task])
