"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from tunesmith.config import MethodConfig
from tunesmith.methods import Method, register


def apply_full(model, cfg: MethodConfig):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


# Every weight moves: the smallest step. Classifiers: encoder fine-tuning guides use 2e-5 to 1e-4, higher for
# small encoders; on MiniLM (docs/classification-benchmark.md) 1e-4 reached 98.12% on BBC News where the autopilot's
# 15-minute plan at 5e-5 reached 96.24%, and 5e-5 stayed below `features` on a small 6-class set (issue 20's table).
# Generators: the rate LLM fine-tuning papers use for full weights.
RATES = {"classifier": 1e-4, "generator": 2e-5}
register(Method("full", apply_full, is_adapter=False, summary="every weight trains", learning_rates=RATES))
