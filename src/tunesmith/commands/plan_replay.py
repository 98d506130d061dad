"""`tunesmith plan` proposing data.replay: self-replay against forgetting, when the budget leaves time to generate it.

Self-replay costs one generation pass before training (data.replay: the base model answers up to max_prompts prompts
of up to max_new_tokens tokens); the trained steps stay as planned, a share of each epoch being replay rows. The
plan proposes it for a language model when the run's share of the budget, less the predicted run, holds that
generation by an estimate made from the probe's own step time (no extra probe). Users who do not want it delete
the two lines; a config that sets data.replay or data.mix itself is left as written.
"""

from __future__ import annotations

from tunesmith.commands.plan_probes import Measurement
from tunesmith.config import Config, ReplaySettings

SHARE = 0.05  # the share docs/evaluation.md measures on the quickstart (bench/results/replay.json)
# A training step is a forward and a backward pass (about three forwards) over rows_per_step x mean_tokens tokens;
# decoding one token at a time for a batch of 8 uses the CPU far worse than that. An a-priori allowance, set before
# any replay run was timed; bench/results/replay.json records the estimate beside the measured generation.
DECODE_SLOWDOWN = 4.0
LOAD_SECONDS = 10.0  # loading the base model a second time for the generation pass


def generation_seconds(
    measurement: Measurement, rows_per_step: int, mean_tokens: float, settings: ReplaySettings
) -> float:
    """Predicted seconds of self-replay's generation pass, from the probe's seconds per training step."""
    forward_token = measurement.seconds_per_step / (3 * rows_per_step * max(mean_tokens, 1.0))
    tokens = settings.max_prompts * settings.max_new_tokens
    return LOAD_SECONDS + tokens * forward_token * DECODE_SLOWDOWN


def propose(
    cfg: Config, provides: frozenset[str], measurement: Measurement, predicted: float, run_budget: float,
    rows_per_step: int, mean_tokens: float, answers_prompts: bool,
) -> tuple[dict | None, str | None]:  # fmt: skip
    """(data.replay settings to write, or None; the reason line, or None where replay is not for this task)."""
    if "replay" not in provides or measurement.whole_run_seconds is not None:
        return None, None
    if cfg.data.replay is not None or cfg.data.mix:
        return None, "data.replay / data.mix: yours, as written"
    if not answers_prompts:
        return None, (
            "no data.replay proposed: the model has no chat template, so its answers to general prompts would not "
            "be answers; give general text as data.replay.source to replay it"
        )
    settings = ReplaySettings(share=SHARE)
    cost = generation_seconds(measurement, rows_per_step, mean_tokens, settings)
    left = run_budget - predicted
    if cost > left:
        return None, (
            f"no data.replay: generating self-replay's {settings.max_prompts} answers would take about {cost:.0f} s and "
            f"the run leaves {max(left, 0):.0f} s; with more --time the plan adds it against forgetting"
        )
    return {"share": SHARE}, (
        f"data.replay share {SHARE:g}: {SHARE:.0%} of each epoch is the base model's own answers to general prompts "
        f"(generated once, about {cost:.0f} s, which the run's budget leaves: {left:.0f} s), against forgetting what it "
        "knew (docs/evaluation.md); delete data.replay to train on your rows alone"
    )
