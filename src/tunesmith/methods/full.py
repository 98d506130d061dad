"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from tunesmith.config import MethodConfig
from tunesmith.methods import Method, register


def apply_full(model, cfg: MethodConfig):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


# Every weight moves: the smallest step (the rates BERT and LLM fine-tuning papers use).
RATES = {"classifier": 5e-5, "generator": 2e-5}
register(Method("full", apply_full, is_adapter=False, summary="every weight trains", learning_rates=RATES))
