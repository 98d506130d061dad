"""`tunesmith plan`: from the data, a time budget and this machine's measured speed, a complete config that fits.

The recipe, top to bottom: read and check the data (rows, token lengths, classes); take the task's ladder of
methods (cheapest first); measure each one here with a short probe run in its own process (a few optimizer steps
on the real data, one evaluation; cached per model, settings, data and host); size the richest one that fits the
budget and the memory (steps, evaluations, warmup, early stopping), predict its time and peak memory, and write
the config with every choice's reason. The budget is the user's wall clock for planning and training together:
planning gets at most PROBE_SHARE of it (cached probes cost nothing), and the run gets what planning left, as its
`train.time_budget`, so it ends inside the budget even when the machine turns out slower than the probe.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import yaml

from tunesmith.commands import plan_replay
from tunesmith.commands.plan_probes import (
    PROBE_FLOOR_SECONDS,
    PROBE_STEPS,
    Measurement,
    ProbeCache,
    ProbeOutOfTime,
    apply_rung,
    host_description,
    run_probe,
)
from tunesmith.config import Config, config_from_dict, parse_duration, read_yaml
from tunesmith.console import say
from tunesmith.data.lengths import token_count
from tunesmith.data.readers import read_rows
from tunesmith.data.templates import LossMask
from tunesmith.errors import TunesmithError
from tunesmith.models.loading import default_cache_dir, load_tokenizer, resolve_model
from tunesmith.registry import get_method, get_task
from tunesmith.run_folder import free_path
from tunesmith.tasks import defaults
from tunesmith.tasks.base import Rung

SAFETY = 0.92  # plan to end at this fraction of the budget: the last evaluation and writing out vary
EVALUATIONS = 5  # evaluations per planned run (early stopping and the curves need several points)
IMBALANCE = 3.0  # classes this uneven (largest / smallest) get class weights
SHORTER_LENGTHS = (256, 128)  # max_length tried when the data's p95 does not leave time for the rung
# Planning (reading the data, the probes) gets at most this share of --time; the run gets what planning leaves.
# A choice, not fitted to any score: it leaves the run most of the budget.
PROBE_SHARE = 0.4
# A richer rung that fits only over fewer tokens than a whole-run rung's (features) best length is passed over
# only when features over the longer length beats features over the shorter one on the same validation examples
# with this one-sided confidence (a paired bootstrap of the macro-F1 difference), not by a fixed point margin.
CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000


@dataclass
class Option:
    rung: Rung
    max_length: int
    measurement: Measurement | None  # None: not probed (planning's share of the budget was spent)
    steps: int = 0
    epochs: float = 0.0
    eval_every: int = 0
    predicted_seconds: float = 0.0
    fits: bool = False
    why_not: str = ""
    reasons: list[str] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)  # a whole-run rung's validation score per length
    answers: dict[int, dict] = field(default_factory=dict)  # and its validation answers per length


@dataclass(frozen=True)
class Shape:
    """The data's size as the sizing needs it (probes leave the test split out; the sizing adds it back)."""

    train_rows: int
    validation_rows: int
    test_rows: int
    batch: int  # training rows per optimizer step (batch_size x grad_accum): what a probe's step timed
    max_epochs: float

    @property
    def test_per_validation(self) -> float:  # one test evaluation in units of a validation evaluation
        return self.test_rows / max(1, self.validation_rows)

    @property
    def test_per_seen(self) -> float:  # a fitting step's extra pass over the test split
        return self.test_rows / max(1, self.train_rows + self.validation_rows)


# -- the data -----------------------------------------------------------------------------------------------
def guess_task(path: Path) -> str:
    """The task a data file or folder is for: the registered task whose data signature it matches best."""
    from tunesmith.registry import default_task, task_names

    if path.is_dir():
        fields, suffixes = None, {p.suffix.lower() for p in path.rglob("*") if p.is_file()}
    else:
        first = next((row.data for row in read_rows(path) if isinstance(row.data, dict)), None)
        fields, suffixes = set(first or {}), None
    scores = {name: get_task(name).recognizes(fields, suffixes) for name in task_names()}
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else default_task()


def base_config(source: Path, model: str | None, task: str | None) -> dict:
    """The raw config to plan from: a YAML config as written, or a data file/folder plus --model."""
    if source.suffix.lower() in {".yaml", ".yml"}:
        raw = read_yaml(source)
        if model:
            raw.setdefault("model", {})["name"] = model
        return raw
    if not source.exists():
        raise TunesmithError(f"plan: {source} not found; give a data file or folder, or a config .yaml")
    if not model:
        raise TunesmithError(
            f"plan: {source} is data; name the model to fine-tune with --model PATH (a local folder or hub id)"
        )
    task = task or guess_task(source)
    say(f"plan: task {task} (from {'--task' if task else 'the data'}); --task chooses another")
    raw: dict = {"task": task, "model": {"name": model}, "data": {"train_file": str(source.resolve())}}
    raw["data"]["validation_ratio"] = 0.1
    raw["data"]["test_ratio"] = 0.1  # a held-out test split: the plan's run reports on data nothing chose
    return raw


def token_lengths(cfg: Config, checked) -> list[int]:
    """Each training example's tokens as training renders it (empty for images and audio)."""
    from tunesmith.data.prepare import build_renderer

    path = resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))
    tokenizer = load_tokenizer(path, cfg.model)
    try:
        renderer = build_renderer(tokenizer, cfg.data, checked)
    except (
        TunesmithError
    ):  # an encoder has no EOS to render answers with; labelled texts need the tokenizer only
        renderer = SimpleNamespace(tokenizer=tokenizer)
    counts = [token_count(example, renderer, LossMask.of(cfg.data)) for example in checked.train]
    return [n for n in counts if n is not None]


def answers_prompts(cfg: Config) -> bool:
    """Whether the model renders chats (an instruct model): only such a model's answers make self-replay rows."""
    path = resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))
    return cfg.data.template != "classic" and bool(
        getattr(load_tokenizer(path, cfg.model), "chat_template", None)
    )


def model_max_length(cfg: Config) -> int | None:
    from transformers import AutoConfig

    path = resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None
    return getattr(config, "max_position_embeddings", None)


def covering_length(lengths: list[int], limit: int | None, percent: float = 95) -> int:
    """max_length covering `percent` of the examples, rounded up to a multiple of 32, within the model's positions."""
    length = 32 * math.ceil(int(np.percentile(lengths, percent)) / 32)
    return min(length, limit) if limit else length


def mean_tokens(lengths: list[int], max_length: int) -> float:
    return float(np.mean(np.minimum(lengths, max_length))) if lengths else 1.0


# -- sizing -------------------------------------------------------------------------------------------------
def size_option(option: Option, budget: float, memory_mb: float, shape: Shape) -> Option:
    """Steps, evaluations and the predicted time of one option inside the budget; fits says whether it does."""
    m, rung = option.measurement, option.rung
    option.fits, option.why_not = False, ""
    if m.peak_memory_mb > memory_mb:
        option.why_not = f"needs {m.peak_memory_mb:,.0f} MB, over the {memory_mb:,.0f} MB allowed"
        return option
    if m.whole_run_seconds is not None:  # the probe's embeddings are cached; the test split's are new
        option.predicted_seconds = whole_run_seconds(m, shape)
        option.fits = option.predicted_seconds <= budget * SAFETY
        option.why_not = "" if option.fits else f"takes {option.predicted_seconds:.0f} s"
        return option
    steps_per_epoch = max(1, math.ceil(shape.train_rows / shape.batch))
    # the evaluations: EVALUATIONS during the run, one before training, and the test split's after it
    fixed = m.overhead_seconds + (EVALUATIONS + 1 + test_passes(m, shape)) * m.evaluation_seconds
    available = budget * SAFETY - fixed
    steps = (
        int(min(available / m.seconds_per_step, shape.max_epochs * steps_per_epoch)) if available > 0 else 0
    )
    option.steps, option.epochs = steps, round(steps / steps_per_epoch, 2)
    option.eval_every = max(1, steps // EVALUATIONS)
    evaluations = (steps // option.eval_every if steps else 0) + 1 + test_passes(m, shape)
    option.predicted_seconds = (
        m.overhead_seconds + steps * m.seconds_per_step + evaluations * m.evaluation_seconds
    )
    option.fits = option.epochs >= rung.min_epochs and steps > 0
    if not option.fits:
        option.why_not = f"{option.epochs:g} epochs fit, it needs {rung.min_epochs:g}"
    return option


def test_passes(m: Measurement, shape: Shape) -> float:
    """The test split's evaluation in units of a validation one, where the probe's times do not hold it already."""
    return 0.0 if m.tested else shape.test_per_validation


def whole_run_seconds(m: Measurement, shape: Shape) -> float:
    """A whole-run rung's run: its probe less the training embeddings it cached, plus a test pass if the probe
    had none."""
    return (
        m.whole_run_seconds - m.cached_seconds + (0.0 if m.tested else m.cached_seconds * shape.test_per_seen)
    )


def seconds_needed(option: Option, shape: Shape) -> float:
    """The budget at which this option would just fit (for the error when nothing does)."""
    m = option.measurement
    if m.whole_run_seconds is not None:
        return whole_run_seconds(m, shape) / SAFETY
    steps = max(1.0, option.rung.min_epochs * math.ceil(shape.train_rows / shape.batch))
    evaluations = EVALUATIONS + 1 + test_passes(m, shape)
    return (m.overhead_seconds + steps * m.seconds_per_step + evaluations * m.evaluation_seconds) / SAFETY


def format_seconds(seconds: float) -> str:
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


# -- the clock ----------------------------------------------------------------------------------------------
@dataclass
class Planning:
    """The user's clock: planning spends at most PROBE_SHARE of the budget; the run gets what planning leaves."""

    budget: float
    started: float
    clock: Callable[[], float]
    floor: float  # the least a probe not measured yet costs here
    measured: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    not_probed: list[str] = field(default_factory=list)
    probing_seconds: float = 0.0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def share_left(self) -> float:
        return self.budget * PROBE_SHARE - self.elapsed()

    def run_budget(self) -> float:
        return self.budget - self.elapsed()

    def sizing_budget(self) -> float:
        """While probing: the least the run will get (planning stops at its share, or already ran past it)."""
        return min(self.budget * (1 - PROBE_SHARE), self.run_budget())

    def summary(self) -> str:
        parts = [f"measured {', '.join(self.measured)}"] if self.measured else []
        if self.reused:
            parts.append(f"reused from the cache, costing nothing: {', '.join(self.reused)}")
        if self.not_probed:
            parts.append(f"not probed, planning's share spent: {', '.join(self.not_probed)}")
        return "; ".join(parts) or "none"


def command_started(clock: Callable[[], float]) -> float:
    """When the user's wait began: the `tunesmith plan` process's start (its imports counted) when this process is
    that command; called from Python, now."""
    if clock is time.time and sys.argv[1:2] == ["plan"]:
        return psutil.Process().create_time()
    return clock()


def refuse_a_budget_too_small_to_probe(budget: float, floor: float, measured_here: bool) -> None:
    """At once, before reading the data: a budget whose planning share cannot hold one probe."""
    if budget * PROBE_SHARE >= floor:
        return
    needed = floor / PROBE_SHARE
    basis = (
        "the fastest probe of this model measured here"
        if measured_here
        else "a probe's least on a 2-core host"
    )
    raise TunesmithError(
        f"plan: --time {format_seconds(budget)} is too short to measure anything: a probe is a short training run "
        f"in its own process ({floor:.0f} s, {basis}) and probes get {PROBE_SHARE:.0%} of the budget; the "
        f"smallest budget that could fit is {format_seconds(needed)} (--time {format_seconds(needed)})"
    )


# -- the recipe ---------------------------------------------------------------------------------------------
def plan(
    source: str | Path,
    time_budget: str | float,
    memory: str | None = None,
    model: str | None = None,
    task: str | None = None,
    output: str | Path | None = None,
    probe=run_probe,
    clock: Callable[[], float] = time.time,
) -> dict:
    """Write a config whose planning and run together fit `time_budget` (and `memory`) on this machine."""
    budget = parse_budget(time_budget)
    started = command_started(clock)
    memory_mb = parse_memory(memory) if memory else psutil.virtual_memory().available / 2**20 * 0.9
    source = Path(source)
    raw = base_config(source, model, task)
    cfg = config_from_dict(raw, base=source.parent if source.suffix in {".yaml", ".yml"} else ".")
    raw = json.loads(cfg.model_dump_json(exclude_unset=True))  # paths made absolute, as validated
    cache = ProbeCache(default_cache_dir(cfg.output.cache_dir) / "plan_probes.json")
    plan_key = ProbeCache.plan_key(raw)
    fastest = cache.fastest_probe(cfg.model.name)
    if not cache.holds_plan(plan_key):  # with its probes cached, planning costs next to nothing
        refuse_a_budget_too_small_to_probe(budget, fastest or PROBE_FLOOR_SECONDS, fastest is not None)
    planning = Planning(budget, started, clock, fastest or PROBE_FLOOR_SECONDS)
    the_task = get_task(cfg.task)
    checked = the_task.validated_data(cfg)
    rows = len(checked.train)
    reasons = [f"data: {rows} training rows, {len(checked.validation)} validation, {len(checked.test)} test"]
    lengths = token_lengths(cfg, checked)
    limit = model_max_length(cfg)
    # 95% of the examples whole; where longer ones would be dropped (not cut), all of them
    covered = 100 if cfg.data.on_overflow == "drop" else 95
    longest = covering_length(lengths, limit, covered) if lengths else cfg.data.max_length
    if lengths:
        reasons.append(
            f"max_length {longest}: covers {covered}% of the training examples (p95 "
            f"{int(np.percentile(lengths, 95))} tokens, longest {max(lengths)}"
            f"{f'; the model reads at most {limit}' if limit else ''}); any longer are counted in the data report "
            f"({cfg.data.on_overflow})"
        )
    batch = batch_size(cfg, rows, the_task.plan_kind)
    raw.setdefault("train", {})["batch_size"] = batch
    classes = checked.report.get("train_classes") or {}
    if classes.get("imbalance_ratio"):
        ratio = classes["imbalance_ratio"]
        weighted = ratio >= IMBALANCE and "class_weights" not in cfg.train.model_fields_set
        if weighted:
            raw["train"]["class_weights"] = True
        reasons.append(
            f"{len(classes['counts'])} classes, the largest {ratio:g}x the smallest: "
            + ("the loss is weighted by inverse class frequency" if weighted else "no class weights needed")
        )
    max_epochs = defaults.EPOCH_RANGE[the_task.plan_kind][1]

    def measure(rung: Rung, max_length: int, expected: float = 0.0) -> Measurement | None:
        """The cached probe, else a probe while planning's share lasts (None once it is spent, or when the probe
        is `expected` to take longer than the share left)."""
        label = f"{rung.label} at {max_length}"
        key = ProbeCache.key(raw, rung, max_length)
        found = cache.get(key)
        if found is not None:
            planning.reused.append(label)
            return found
        # Without one measurement nothing can be planned: the first probe may start and run past the share (never
        # past the budget), so that a refusal names a budget that would fit and the next plan finds it cached.
        first = not planning.measured and not planning.reused
        left = planning.run_budget() if first else planning.share_left()
        if left < max(planning.floor, expected):
            planning.not_probed.append(
                label + (f" (about {expected:.0f} s)" if expected > planning.floor else "")
            )
            return None
        say(f"plan: probing {label} ({PROBE_STEPS} steps; stopped after {left:.0f} s at most) ...")
        began = planning.clock()
        try:
            found = probe(raw, rung, max_length, PROBE_STEPS, timeout=left)
        except ProbeOutOfTime:
            planning.not_probed.append(f"{label} (stopped after {planning.clock() - began:.0f} s)")
            return None
        finally:
            planning.probing_seconds += planning.clock() - began
        seconds = planning.clock() - began
        planning.measured.append(f"{label} ({seconds:.0f} s)")
        planning.floor = min(planning.floor, seconds) if len(planning.measured) > 1 else seconds
        cache.put(key, found, plan_key, cfg.model.name)
        return found

    rows_per_step = batch * cfg.train.grad_accum
    shape = Shape(rows, len(checked.validation), len(checked.test), rows_per_step, max_epochs)
    # shorter lengths only where longer examples are cut, not dropped (a shorter length must not lose rows)
    shortening = lengths if cfg.data.on_overflow != "drop" else []
    if lengths and not shortening:
        reasons.append(
            f"data.on_overflow: drop: a max_length under {longest} would drop examples; none is tried"
        )
    options: list[Option] = []
    ladder = the_task.plan_ladder(cfg)
    for rung in [r for r in ladder if not r.when_short_of_memory]:
        options.append(
            consider(rung, longest, shortening, measure, planning.sizing_budget(), memory_mb, shape)
        )
    measured = [o for o in options if o.measurement is not None]
    if not any(o.fits for o in options) and measured and all("MB" in o.why_not for o in measured):
        for rung in [r for r in ladder if r.when_short_of_memory]:
            options.append(
                consider(rung, longest, shortening, measure, planning.sizing_budget(), memory_mb, shape)
            )
    run_budget = math.floor(planning.run_budget())  # sized to what planning actually left
    for option in options:
        if option.measurement is not None:
            size_option(option, run_budget, memory_mb, shape)
        say(f"  {describe(option)}")
    fitting = [o for o in options if o.fits]
    if not fitting:
        raise TunesmithError(nothing_fits(options, planning, shape, memory_mb, run_budget))
    chosen = choose(fitting, lambda option, length: seconds_needed(rescaled(option, lengths, length), shape))
    replay, replay_reason = plan_replay.propose(
        cfg, the_task.provides, chosen.measurement, chosen.predicted_seconds, run_budget, rows_per_step,
        mean_tokens(lengths, chosen.max_length) if lengths else cfg.data.max_length, answers_prompts(cfg),
    )  # fmt: skip
    if replay is not None:
        raw.setdefault("data", {})["replay"] = replay
    if replay_reason:
        chosen.reasons.append(replay_reason)
    reasons.append(
        f"--time {format_seconds(budget)} is planning and training together: planning gets at most "
        f"{PROBE_SHARE:.0%} ({format_seconds(budget * PROBE_SHARE)}) and took {format_seconds(planning.elapsed())} "
        f"(probes: {planning.summary()}), so this run gets {format_seconds(run_budget)} (train.time_budget), "
        "counted from the start of `tunesmith train`: start it right away, the wait between is not counted"
    )
    planned = write_plan(raw, chosen, run_budget, memory_mb, reasons, cfg, the_task.plan_kind, rows, batch)
    path = free_path(Path(output) if output else Path(f"plan-{format_seconds(budget)}.yaml"))
    path.write_text(planned["text"], encoding="utf-8")
    say(
        f"plan: {chosen.rung.label}, predicted {chosen.predicted_seconds:.0f} s and "
        f"{chosen.measurement.peak_memory_mb:,.0f} MB peak; planning took {planning.elapsed():.0f} s of the "
        f"{format_seconds(budget)} (probes: {planning.summary()}); config written to {path}, its run gets "
        f"{format_seconds(run_budget)}"
    )
    return {
        "config": str(path),
        "method": chosen.rung.label,
        "max_length": chosen.max_length,
        "steps": chosen.steps,
        "predicted_seconds": round(chosen.predicted_seconds, 1),
        "predicted_peak_memory_mb": chosen.measurement.peak_memory_mb,
        "replay": replay,
        "budget_seconds": budget,
        "planning_seconds": round(planning.elapsed(), 1),
        "run_budget_seconds": run_budget,
        "probes": {
            "measured": planning.measured,
            "reused": planning.reused,
            "not_probed": planning.not_probed,
            "seconds": round(planning.probing_seconds, 1),
        },
        "reasons": planned["reasons"],
        "options": [
            {
                "method": o.rung.label,
                "max_length": o.max_length,
                "fits": o.fits,
                "why_not": o.why_not,
                "predicted_seconds": round(o.predicted_seconds, 1),
                **(
                    {k: v for k, v in asdict(o.measurement).items() if k != "validation_answers"}
                    if o.measurement
                    else {}
                ),
            }
            for o in options
        ],
    }


def describe(option: Option) -> str:
    if option.measurement is None:
        return f"{option.rung.label} at max_length {option.max_length}: {option.why_not}"
    verdict = "fits" if option.fits else f"does not fit: {option.why_not}"
    return (
        f"{option.rung.label} at max_length {option.max_length}: {verdict} (predicted "
        f"{option.predicted_seconds:.0f} s, peak {option.measurement.peak_memory_mb:,.0f} MB"
        f"{', cached probe' if option.measurement.cached else ''})"
    )


def nothing_fits(
    options: list[Option], planning: Planning, shape: Shape, memory_mb: float, run_budget: float
) -> str:
    """The one-line refusal: what would fit, from what was measured."""
    measured = [o for o in options if o.measurement is not None]
    budget = format_seconds(planning.budget)
    if not measured:  # the first probe was stopped at the budget's end, or could not start
        return (
            f"plan: --time {budget} ran out before any method was measured ({', '.join(planning.not_probed)}); "
            "the probe did not finish, so nothing is cached: a budget over twice as long is likely needed, for "
            f"the probe and a run about as long (--time {format_seconds(2 * planning.budget)} or more)"
        )
    timed = [o for o in measured if "MB" not in o.why_not]
    if not timed:
        return f"plan: no method fits in {memory_mb:,.0f} MB here; allow more with --memory"
    again = planning.elapsed() - planning.probing_seconds  # the probes are cached now
    needed = min(seconds_needed(o, shape) for o in timed) + again
    return (
        f"plan: no method fits in {budget} on this machine (planning took {format_seconds(planning.elapsed())}, "
        f"leaving the run {format_seconds(max(0, run_budget))}); the smallest budget that fits is "
        f"{format_seconds(needed)} (--time {format_seconds(needed)}; its probes are cached now, so planning it "
        f"takes about {again:.0f} s)"
    )


def choose(fitting: list[Option], needed_at) -> Option:
    """The richest fitting rung (the ladder runs cheapest to richest), unless it reads less of each example than a
    whole-run rung (features) showed matters, beyond the validation set's noise: then the richest that reads enough."""
    reader = next((o for o in fitting if len(o.scores) > 1), None)
    if reader is None:
        return fitting[-1]

    def scored_over(length: int) -> int:  # the longest length the reader was scored at that `length` covers
        return max((n for n in reader.scores if n <= length), default=min(reader.scores))

    def comparison(length: int) -> tuple[float, float, float] | None:
        """features over its best length against over `length`, on the same validation examples."""
        longer, shorter = reader.answers.get(reader.max_length), reader.answers.get(scored_over(length))
        if not longer or not shorter or longer["expected"] != shorter["expected"]:
            return None  # no answers to pair (e.g. a probe cached before they were kept): no evidence
        return paired_bootstrap(longer["expected"], longer["predicted"], shorter["predicted"])

    def reads_enough(option: Option) -> bool:
        if option is reader or option.max_length >= reader.max_length:
            return True
        found = comparison(option.max_length)
        return found is None or found[2] <= 0

    ranked = fitting[::-1]
    chosen = next(o for o in ranked if reads_enough(o))  # the reader itself reads enough
    passed = ranked[: ranked.index(chosen)]
    shortest = passed[0] if passed else chosen  # the passed-over rungs read no further than the first of them
    if shortest.max_length >= reader.max_length:
        return chosen
    compared = comparison(shortest.max_length)
    if compared is None:
        return chosen
    over = scored_over(shortest.max_length)
    examples = len(reader.answers[reader.max_length]["expected"])
    evidence = (
        f"{reader.rung.label} scored validation macro-F1 {compared[0]:.4f} over {reader.max_length} tokens against "
        f"{compared[1]:.4f} over {over} on the same {examples} examples, a difference whose one-sided "
        f"{CONFIDENCE:.0%} lower bound is {100 * compared[2]:+.2f} points (paired bootstrap, "
        f"{BOOTSTRAP_SAMPLES} resamples)"
    )
    if not passed:
        if compared[0] > compared[1]:
            chosen.reasons.append(
                f"{chosen.rung.label} over the first {chosen.max_length} tokens although {evidence}: within the "
                "validation set's noise, so the text past them is not shown to matter"
            )
        return chosen
    needs = ", ".join(
        f"{o.rung.label} about --time {format_seconds(needed_at(o, reader.max_length))}" for o in passed
    )
    chosen.reasons.append(
        f"not {', '.join(o.rung.label for o in passed)}: this budget fits "
        f"{'it' if len(passed) == 1 else 'them'} only over the first {passed[0].max_length} tokens, and {evidence}: "
        f"on this data the text past {over} tokens matters (over {reader.max_length} tokens they would need, for "
        f"the run alone: {needs})"
    )
    return chosen


def paired_bootstrap(expected: list, first: list, second: list, seed: int = 0) -> tuple[float, float, float]:
    """Macro-F1 of the answers `first` and `second` to the same examples, and the one-sided CONFIDENCE lower bound
    of first minus second: examples resampled with replacement, each keeping both answers (seeded: a plan
    repeats)."""
    names = sorted({*expected, *first, *second})
    code = {name: i for i, name in enumerate(names)}
    truth, one, other = (np.array([code[x] for x in xs], dtype=np.int32) for xs in (expected, first, second))
    random = np.random.default_rng(seed)
    gains = []
    for size in [250] * (BOOTSTRAP_SAMPLES // 250):  # in chunks: a large validation set stays small in memory
        draws = random.integers(0, len(truth), size=(size, len(truth)))
        gains.append(
            macro_f1(truth[draws], one[draws], len(names)) - macro_f1(truth[draws], other[draws], len(names))
        )
    low = float(np.quantile(np.concatenate(gains), 1 - CONFIDENCE))
    first_f1, second_f1 = (float(macro_f1(truth[None], a[None], len(names))[0]) for a in (one, other))
    return first_f1, second_f1, low


def macro_f1(truth: np.ndarray, answers: np.ndarray, classes: int) -> np.ndarray:
    """Macro-F1 of each row over the classes of the whole split (one neither expected nor answered in a row
    scores 0 there)."""
    scores = []
    for k in range(classes):
        hit, said = truth == k, answers == k
        tp, fp, fn = (hit & said).sum(1), (~hit & said).sum(1), (hit & ~said).sum(1)
        scores.append(2 * tp / np.maximum(2 * tp + fp + fn, 1))
    return np.mean(scores, axis=0)


def rescaled(option: Option, lengths: list[int], length: int) -> Option:
    """The option's measurement scaled by the token counts to another max_length (an estimate, not a probe)."""
    scale = mean_tokens(lengths, length) / mean_tokens(lengths, option.max_length)
    m = option.measurement
    estimate = Measurement(
        m.seconds_per_step * scale,
        m.evaluation_seconds * scale,
        m.overhead_seconds,
        m.peak_memory_mb,
        m.whole_run_seconds * scale if m.whole_run_seconds is not None else None,
        m.cached_seconds * scale,
        tested=m.tested,
    )
    return Option(option.rung, length, estimate)


def consider(
    rung: Rung, longest: int, lengths: list[int], measure, budget: float, memory_mb: float, shape: Shape
) -> Option:
    """The rung at the longest max_length that fits, probed from the shortest length up: a longer length is
    probed only when the shorter one's measurement, scaled by the token counts, says it fits, so planning never
    waits on a probe the budget could not hold."""
    candidates = sorted({longest, *(n for n in SHORTER_LENGTHS if n < longest)}) if lengths else [longest]
    shortest = measure(rung, candidates[0])
    if shortest is None:
        return Option(
            rung, candidates[0], None, why_not="not probed: planning's share of the budget was spent"
        )
    first = size_option(Option(rung, candidates[0], shortest), budget, memory_mb, shape)
    if not first.fits:
        return first  # the shortest length does not fit: a longer one would not either
    fitting, unprobed = [first], None
    for length in candidates[1:]:
        if not size_option(rescaled(fitting[-1], lengths, length), budget, memory_mb, shape).fits:
            break
        measurement = measure(rung, length, probe_cost(fitting[-1], lengths, length))
        if measurement is None:
            unprobed = length
            break
        measured = size_option(Option(rung, length, measurement), budget, memory_mb, shape)
        if not measured.fits:
            break
        fitting.append(measured)
    best = fitting[-1]  # a rung with steps: the longest length that leaves time for its epochs
    scored = [o for o in fitting if o.measurement.validation_score is not None]
    if first.measurement.whole_run_seconds is not None and len(scored) > 1:
        # a probe of a fitting step was the whole run: its validation score is the run's, so choose by it
        best = max(scored, key=lambda o: (o.measurement.validation_score, -o.max_length))
        best.scores = {o.max_length: o.measurement.validation_score for o in scored}
        best.answers = {
            o.max_length: o.measurement.validation_answers for o in scored if o.measurement.validation_answers
        }
        scores = ", ".join(f"{o.measurement.validation_score:.4f} at {o.max_length}" for o in scored)
        best.reasons.append(
            f"max_length {best.max_length}: the {rung.label} probes, each a whole run, scored validation {scores} "
            "(their validation split holds no test example)"
        )
    elif best.max_length != longest:
        best.reasons.append(
            f"max_length {best.max_length}, not {longest} (95% of the examples whole): {rung.label} over the first "
            f"{best.max_length} tokens fits the budget"
            + (f" with {best.epochs:g} epochs" if best.measurement.whole_run_seconds is None else "")
            + (
                f"; over {unprobed} it was not probed: planning's share of the budget was spent"
                if unprobed
                else f"; over {candidates[candidates.index(best.max_length) + 1]} it would not"
            )
        )
    return best


def probe_cost(option: Option, lengths: list[int], length: int) -> float:
    """About what probing the option's rung at another length costs: the part of its probe that reads tokens
    (the embedding pass of a whole run; the steps and the evaluation otherwise) scaled by the token counts."""
    m = option.measurement
    reading = m.cached_seconds if m.whole_run_seconds is not None else m.probe_seconds - m.overhead_seconds
    scale = mean_tokens(lengths, length) / mean_tokens(lengths, option.max_length)
    return m.probe_seconds + max(0.0, reading) * (scale - 1)


def batch_size(cfg: Config, rows: int, kind: str) -> int:
    if "batch_size" in cfg.train.model_fields_set:
        return cfg.train.batch_size
    if kind == defaults.CLASSIFIER:
        return 16 if rows >= 512 else 8
    return cfg.train.batch_size


def write_plan(raw, chosen: Option, run_budget, memory_mb, reasons, cfg, kind, rows, batch) -> dict:
    """The planned config as commented YAML: every choice's reason above the settings."""
    m = chosen.measurement
    planned = apply_rung(raw, chosen.rung, chosen.max_length)
    reasons = [*reasons, f"method {chosen.rung.label}: {chosen.rung.why}", *chosen.reasons]
    method_cfg = config_from_dict(planned).method
    rate = get_method(method_cfg.name).default_learning_rate(kind, method_cfg)
    train = planned.setdefault("train", {})
    if m.whole_run_seconds is None:
        train.update(
            max_steps=chosen.steps,
            eval_steps=chosen.eval_every,
            save_steps=chosen.eval_every,
            early_stopping_patience=3,
            warmup=0.1 if kind == defaults.CLASSIFIER else 0.05,
            batch_size=batch,
            compile=False,
        )
        own_rate = "learning_rate" in cfg.train.model_fields_set and cfg.train.learning_rate is not None
        if own_rate and method_cfg.name == cfg.method.name:
            reasons.append(f"learning rate {cfg.train.learning_rate:g}: yours, for {cfg.method.name}")
        elif rate is not None:
            train["learning_rate"] = rate[0]
            mine = f" (yours, {cfg.train.learning_rate:g}, was for {cfg.method.name})" if own_rate else ""
            reasons.append(f"learning rate {rate[0]:g}: {rate[1]}{mine}")
        reasons.append(
            f"{chosen.steps} steps of batch {batch}"
            + (f" x {cfg.train.grad_accum} accumulated" if cfg.train.grad_accum > 1 else "")
            + f" ({chosen.epochs:g} epochs of {rows} rows) at the measured "
            f"{m.seconds_per_step:.2f} s a step, an evaluation every {chosen.eval_every} steps "
            f"({m.evaluation_seconds:.1f} s each), early stopping after 3 without improvement, the best kept"
        )
    train["time_budget"] = run_budget
    reasons.append(
        f"train.time_budget {format_seconds(run_budget)}: what planning left of --time; the run re-sizes its "
        "schedule if this machine runs slower than the probe"
    )
    reasons.append(
        f"predicted: {chosen.predicted_seconds:.0f} s for the whole run and {m.peak_memory_mb:,.0f} MB peak "
        f"memory (probe of {PROBE_STEPS} steps on this machine{', cached' if m.cached else ''})"
    )
    planned["plan"] = {
        "budget_seconds": run_budget,  # the run's: run.json's plan record times `tunesmith train` against it
        "memory_limit_mb": round(memory_mb),
        "predicted_seconds": round(chosen.predicted_seconds, 1),
        "predicted_peak_memory_mb": m.peak_memory_mb,
        "host": host_description(),
        "reasons": reasons,
    }
    config_from_dict(copy.deepcopy(planned))  # what is written is a valid config
    header = [
        "# Written by `tunesmith plan`. --time counts planning and training together: planning (its probes) took",
        f"# part of it and this run gets the rest, {format_seconds(run_budget)} (train.time_budget) from the start of",
        "# `tunesmith train`. Why each choice was made:",
    ] + [f"#  - {r}" for r in reasons]
    body = yaml.safe_dump(planned, sort_keys=False, width=120)
    return {"text": "\n".join(header) + "\n" + body, "reasons": reasons}


def parse_budget(value) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise TunesmithError(f"--time: {exc}") from None


def parse_memory(value: str) -> float:
    """'8G', '512M', '8GB' -> megabytes."""
    text = str(value).strip().upper().removesuffix("B")
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text) / 2**20  # plain bytes
    except ValueError:
        raise TunesmithError(f"--memory: '{value}' is not a size; write e.g. 8G or 512M") from None
