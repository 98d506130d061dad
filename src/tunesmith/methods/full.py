"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from tunesmith.config import MethodConfig
from tunesmith.methods import Method, register


def apply_full(model, cfg: MethodConfig):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


# Every weight moves: the smallest step (the rates BERT and LLM fine-tuning papers use). The classifier's rate was
# 1e-4 from session 3 to issue 27: chosen after seeing scores on the BBC articles the autopilot reports as its test
# set, and no other data compared the two rates, so it is back to the papers' 5e-5 (docs/autopilot.md).
RATES = {"classifier": 5e-5, "generator": 2e-5}
register(Method("full", apply_full, is_adapter=False, summary="every weight trains", learning_rates=RATES))
