"""Tasks: what differs per kind of training, one module each, registered by name (tunesmith.registry).

Code outside tasks/ asks a run's Task (`get_task(cfg.task)`); adding a task is adding a module and one import here.
"""

from tunesmith.registry import get_task, task_names

__all__ = ["get_task", "task_names"]

# each registers its tasks
from tunesmith.tasks import (  # noqa: E402,F401
    causal_lm,
    classification,
    preference,
    seq2seq,
    speech_recognition,
    token_classification,
)
