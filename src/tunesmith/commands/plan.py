"""`tunesmith plan`: from the data, a time budget and this machine's measured speed, a complete config that fits.

The recipe, top to bottom: read and check the data (rows, token lengths, classes); take the task's ladder of
methods (cheapest first); measure each one here with a short probe run in its own process (a few optimizer steps
on the real data, one evaluation; cached per model, settings, data and host); size the richest one that fits the
budget and the memory (steps, evaluations, warmup, early stopping), predict its time and peak memory, and write
the config with every choice's reason. The run it starts keeps `train.time_budget`, so it ends inside the budget
even when the machine turns out slower than the probe.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import yaml

from tunesmith.config import Config, config_from_dict, parse_duration, read_yaml, set_key
from tunesmith.console import say
from tunesmith.data.lengths import token_count
from tunesmith.data.readers import read_rows
from tunesmith.errors import TunesmithError
from tunesmith.models.loading import default_cache_dir, load_tokenizer, resolve_model
from tunesmith.registry import get_method, get_task
from tunesmith.run_folder import STARTED_AT_ENV, free_path
from tunesmith.tasks import defaults
from tunesmith.tasks.base import Rung

PROBE_STEPS = 8  # optimizer steps a probe times (the first ones carry one-off costs; more cost more planning)
SAFETY = 0.92  # plan to end at this fraction of the budget: the last evaluation and writing out vary
EVALUATIONS = 5  # evaluations per planned run (early stopping and the curves need several points)
IMBALANCE = 3.0  # classes this uneven (largest / smallest) get class weights
SHORTER_LENGTHS = (256, 128)  # max_length tried when the data's p95 does not leave time for the rung
# When a whole-run rung (features) scores this much more validation macro-F1 over its best length than over
# the length a richer rung fits at, the text past that length matters on this data, and the richer rung,
# reading less of each example, is passed over (the BBC small-data benchmark, docs/autopilot.md: fine-tuning
# over the first 128 tokens scored under features over 512 at every size, where features itself gained 2-4).
LENGTH_MATTERS = 0.01


@dataclass
class Measurement:
    """What a probe measured for one (rung, max_length) on this machine."""

    seconds_per_step: float  # a training step (evaluations and checkpoint writes left out)
    evaluation_seconds: float  # one evaluation of the validation split
    overhead_seconds: float  # the rest of the command: imports, loading, data, samples, writing, the report
    peak_memory_mb: float
    whole_run_seconds: float | None = None  # rungs without steps (features): the run itself
    cached_seconds: float = 0.0  # of which work the planned run finds cached (features' embeddings)
    validation_score: float | None = None  # a whole-run probe's validation macro-F1 (or accuracy)
    cached: bool = False


@dataclass
class Option:
    rung: Rung
    max_length: int
    measurement: Measurement
    steps: int = 0
    epochs: float = 0.0
    eval_every: int = 0
    predicted_seconds: float = 0.0
    fits: bool = False
    why_not: str = ""
    reasons: list[str] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)  # a whole-run rung's validation score per length


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
    from tunesmith.data.templates import Renderer

    path = resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))
    tokenizer = load_tokenizer(path, cfg.model)
    try:
        renderer = Renderer(tokenizer, cfg.data.template)
    except (
        TunesmithError
    ):  # an encoder has no EOS to render answers with; labelled texts need the tokenizer only
        renderer = SimpleNamespace(tokenizer=tokenizer)
    counts = [token_count(example, renderer, cfg.data.loss_on) for example in checked.train]
    return [n for n in counts if n is not None]


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


# -- probes -------------------------------------------------------------------------------------------------
def host_description() -> str:
    import torch

    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""  # noqa: SIM115
    model_line = next((line for line in flags.splitlines() if line.startswith("model name")), "")
    cpu = model_line.split(":", 1)[-1].strip() or platform.processor() or platform.machine()
    bf16 = "avx512_bf16" if "avx512_bf16" in flags else ("avx2" if "avx2" in flags else "no avx2")
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    # The threads too: a probe run with one thread (OMP_NUM_THREADS=1, or a busy host's setting) does not
    # predict a run with two, so it is never reused for one.
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, {threads} threads, {bf16}, torch {torch.__version__}{gpu}"


def probe_config(raw: dict, rung: Rung, max_length: int, folder: Path, steps: int) -> dict:
    """The rung's config cut to a probe: `steps` steps, one evaluation at the end, no early stop, no budget."""
    probe = apply_rung(raw, rung, max_length)
    for key, value in {
        "train.max_steps": steps,
        "train.eval_steps": steps,
        "train.save_steps": steps,
        "train.early_stopping_patience": None,
        "train.time_budget": None,
        "train.compile": False,
        "train.report_to": [],
        "eval.before_training": False,
        "data.test_file": None,  # the sizing adds the test split's evaluation back from the validation one
        "data.test_ratio": 0.0,
        "output.dir": str(folder),
        "output.name": "probe",
    }.items():
        set_key(probe, key.split("."), value, "plan")
    probe.pop("plan", None)
    probe.pop("sweep", None)
    return probe


def apply_rung(raw: dict, rung: Rung, max_length: int) -> dict:
    planned = copy.deepcopy(raw)
    for key, value in rung.settings.items():
        set_key(planned, key.split("."), value, "plan")
    set_key(planned, ["data", "max_length"], max_length, "plan")
    return planned


def run_probe(raw: dict, rung: Rung, max_length: int, steps: int) -> Measurement:
    """Train the rung for `steps` steps in a process of its own and read what it measured."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-probe-") as folder:
        config_file = Path(folder) / "probe.yaml"
        config_file.write_text(yaml.safe_dump(probe_config(raw, rung, max_length, Path(folder), steps)))
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", "train", str(config_file)],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != STARTED_AT_ENV},
        )
        elapsed = time.time() - started  # the whole command, as a planned run is timed: imports to report
        summary_file = Path(folder) / "probe" / "run.json"
        if done.returncode != 0 or not summary_file.exists():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise TunesmithError(f"plan: the probe of {rung.label} failed: {last[0]}")
        summary = json.loads(summary_file.read_text())
        metrics = [json.loads(line) for line in (Path(folder) / "probe" / "metrics.jsonl").open()]
    evaluations = [m["eval_runtime"] for m in metrics if "eval_runtime" in m]
    evaluation = max(evaluations) if evaluations else 0.0
    wall = elapsed
    if not summary.get("global_step"):  # a fitting step (features): the probe was the whole run
        cached = summary.get("train_seconds") or 0.0  # the embeddings: cached, the planned run reuses them
        scores = summary.get("validation") or {}
        score = scores.get("f1_macro", scores.get("accuracy"))
        return Measurement(0.0, evaluation, wall, summary["peak_memory_mb"], wall, cached, score)
    train = summary["train_seconds"]
    return Measurement(
        seconds_per_step=train / summary["global_step"],
        evaluation_seconds=evaluation,
        overhead_seconds=max(0.0, wall - train - sum(evaluations)),
        peak_memory_mb=summary["peak_memory_mb"],
    )


def file_digest(path: Path) -> str:
    """The data's content (a folder: its files' names, sizes and times), so a rewritten copy still hits."""
    if path.is_dir():
        listing = sorted(
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime) for p in path.rglob("*")
        )
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ProbeCache:
    """Measurements per (model, task, rung, max_length, batch, data, host): a second plan runs no probe."""

    def __init__(self, path: Path):
        self.path = path
        self.entries = json.loads(path.read_text()) if path.exists() else {}

    @staticmethod
    def key(raw: dict, rung: Rung, max_length: int) -> str:
        data = raw.get("data", {})
        files = [data.get(k) for k in ("train_file", "validation_file", "test_file")]
        stamps = [file_digest(Path(f)) for f in files if f and Path(f).exists()]
        parts = [raw, rung.settings, max_length, stamps, host_description(), PROBE_STEPS]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def get(self, key: str) -> Measurement | None:
        entry = self.entries.get(key)
        if not entry or (entry.get("whole_run_seconds") is not None and "validation_score" not in entry):
            return None  # none, or a whole-run probe from before scores were kept
        return Measurement(**{**entry, "cached": True})

    def put(self, key: str, measurement: Measurement) -> None:
        self.entries[key] = {k: v for k, v in asdict(measurement).items() if k != "cached"}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.entries, indent=1))


# -- sizing -------------------------------------------------------------------------------------------------
def size_option(option: Option, budget: float, memory_mb: float, shape: Shape) -> Option:
    """Steps, evaluations and the predicted time of one option inside the budget; fits says whether it does."""
    m, rung = option.measurement, option.rung
    if m.peak_memory_mb > memory_mb:
        option.why_not = f"needs {m.peak_memory_mb:,.0f} MB, over the {memory_mb:,.0f} MB allowed"
        return option
    if m.whole_run_seconds is not None:  # the probe's embeddings are cached; the test split's are new
        option.predicted_seconds = m.whole_run_seconds + m.cached_seconds * (shape.test_per_seen - 1)
        option.fits = option.predicted_seconds <= budget * SAFETY
        option.why_not = "" if option.fits else f"takes {option.predicted_seconds:.0f} s"
        return option
    steps_per_epoch = max(1, math.ceil(shape.train_rows / shape.batch))
    # the evaluations: EVALUATIONS during the run, one before training, and the test split's after it
    fixed = m.overhead_seconds + (EVALUATIONS + 1 + shape.test_per_validation) * m.evaluation_seconds
    available = budget * SAFETY - fixed
    steps = (
        int(min(available / m.seconds_per_step, shape.max_epochs * steps_per_epoch)) if available > 0 else 0
    )
    option.steps, option.epochs = steps, round(steps / steps_per_epoch, 2)
    option.eval_every = max(1, steps // EVALUATIONS)
    evaluations = (steps // option.eval_every if steps else 0) + 1 + shape.test_per_validation
    option.predicted_seconds = (
        m.overhead_seconds + steps * m.seconds_per_step + evaluations * m.evaluation_seconds
    )
    option.fits = option.epochs >= rung.min_epochs and steps > 0
    if not option.fits:
        option.why_not = f"{option.epochs:g} epochs fit, it needs {rung.min_epochs:g}"
    return option


def seconds_needed(option: Option, shape: Shape) -> float:
    """The budget at which this option would just fit (for the error when nothing does)."""
    m = option.measurement
    if m.whole_run_seconds is not None:
        return (m.whole_run_seconds + m.cached_seconds * (shape.test_per_seen - 1)) / SAFETY
    steps = max(1.0, option.rung.min_epochs * math.ceil(shape.train_rows / shape.batch))
    evaluations = EVALUATIONS + 1 + shape.test_per_validation
    return (m.overhead_seconds + steps * m.seconds_per_step + evaluations * m.evaluation_seconds) / SAFETY


def format_seconds(seconds: float) -> str:
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


# -- the recipe ---------------------------------------------------------------------------------------------
def plan(
    source: str | Path,
    time_budget: str | float,
    memory: str | None = None,
    model: str | None = None,
    task: str | None = None,
    output: str | Path | None = None,
    probe=run_probe,
) -> dict:
    """Write a config that fits `time_budget` (and `memory`) on this machine; returns the plan."""
    budget = parse_budget(time_budget)
    memory_mb = parse_memory(memory) if memory else psutil.virtual_memory().available / 2**20 * 0.9
    source = Path(source)
    raw = base_config(source, model, task)
    cfg = config_from_dict(raw, base=source.parent if source.suffix in {".yaml", ".yml"} else ".")
    raw = json.loads(cfg.model_dump_json(exclude_unset=True))  # paths made absolute, as validated
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
    cache = ProbeCache(default_cache_dir(cfg.output.cache_dir) / "plan_probes.json")

    def measure(rung: Rung, max_length: int) -> Measurement:
        key = ProbeCache.key(raw, rung, max_length)
        found = cache.get(key)
        if found is None:
            say(f"plan: probing {rung.label} at max_length {max_length} ({PROBE_STEPS} steps) ...")
            found = probe(raw, rung, max_length, PROBE_STEPS)
            cache.put(key, found)
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
        options.append(consider(rung, longest, shortening, measure, budget, memory_mb, shape))
    if not any(o.fits for o in options) and all("MB" in o.why_not for o in options):
        for rung in [r for r in ladder if r.when_short_of_memory]:
            options.append(consider(rung, longest, shortening, measure, budget, memory_mb, shape))
    for option in options:
        verdict = "fits" if option.fits else f"does not fit: {option.why_not}"
        say(
            f"  {option.rung.label} at max_length {option.max_length}: {verdict} "
            f"(predicted {option.predicted_seconds:.0f} s, peak {option.measurement.peak_memory_mb:,.0f} MB"
            f"{', cached probe' if option.measurement.cached else ''})"
        )
    fitting = [o for o in options if o.fits]
    if not fitting:
        needed = (
            min(seconds_needed(o, shape) for o in options if "MB" not in o.why_not)
            if any("MB" not in o.why_not for o in options)
            else None
        )
        if needed is None:
            raise TunesmithError(
                f"plan: no method fits in {memory_mb:,.0f} MB here; allow more with --memory"
            )
        raise TunesmithError(
            f"plan: no method fits in {format_seconds(budget)} on this machine; the smallest budget that "
            f"fits is {format_seconds(needed)} (--time {format_seconds(needed)})"
        )
    chosen = choose(fitting, lambda option, length: seconds_needed(rescaled(option, lengths, length), shape))
    planned = write_plan(raw, chosen, budget, memory_mb, reasons, cfg, the_task.plan_kind, rows, batch)
    path = free_path(Path(output) if output else Path(f"plan-{format_seconds(budget)}.yaml"))
    path.write_text(planned["text"], encoding="utf-8")
    say(
        f"plan: {chosen.rung.label}, predicted {chosen.predicted_seconds:.0f} s and "
        f"{chosen.measurement.peak_memory_mb:,.0f} MB peak; config written to {path}"
    )
    return {
        "config": str(path),
        "method": chosen.rung.label,
        "max_length": chosen.max_length,
        "steps": chosen.steps,
        "predicted_seconds": round(chosen.predicted_seconds, 1),
        "predicted_peak_memory_mb": chosen.measurement.peak_memory_mb,
        "budget_seconds": budget,
        "reasons": planned["reasons"],
        "options": [
            {
                "method": o.rung.label,
                "max_length": o.max_length,
                "fits": o.fits,
                "why_not": o.why_not,
                "predicted_seconds": round(o.predicted_seconds, 1),
                **asdict(o.measurement),
            }
            for o in options
        ],
    }


def choose(fitting: list[Option], needed_at) -> Option:
    """The richest fitting rung (the ladder runs cheapest to richest), unless it reads less of each example
    than a whole-run rung's own validation scores showed matters: then the richest that reads enough."""
    reader = next((o for o in fitting if len(o.scores) > 1), None)
    if reader is None:
        return fitting[-1]
    best = reader.scores[reader.max_length]

    def scored_over(length: int) -> int:  # the longest length the reader was scored at that `length` covers
        return max((n for n in reader.scores if n <= length), default=min(reader.scores))

    def reads_enough(option: Option) -> bool:
        return (
            option is reader
            or option.max_length >= reader.max_length
            or best - reader.scores[scored_over(option.max_length)] < LENGTH_MATTERS
        )

    ranked = fitting[::-1]
    chosen = next(o for o in ranked if reads_enough(o))  # the reader itself reads enough
    passed = ranked[: ranked.index(chosen)]
    if passed:
        over = scored_over(passed[0].max_length)
        needs = ", ".join(
            f"{o.rung.label} about --time {format_seconds(needed_at(o, reader.max_length))}" for o in passed
        )
        chosen.reasons.append(
            f"not {', '.join(o.rung.label for o in passed)}: this budget fits "
            f"{'it' if len(passed) == 1 else 'them'} only over the first {passed[0].max_length} tokens, and "
            f"{reader.rung.label} scored validation {best:.4f} over {reader.max_length} against "
            f"{reader.scores[over]:.4f} over {over}: on this data the text past {over} tokens matters "
            f"(over {reader.max_length} tokens they would need: {needs})"
        )
    return chosen


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
    )
    return Option(option.rung, length, estimate)


def consider(
    rung: Rung, longest: int, lengths: list[int], measure, budget: float, memory_mb: float, shape: Shape
) -> Option:
    """The rung at the longest max_length that fits, probed from the shortest length up: a longer length is
    probed only when the shorter one's measurement, scaled by the token counts, says it fits, so planning never
    waits on a probe the budget could not hold."""
    candidates = sorted({longest, *(n for n in SHORTER_LENGTHS if n < longest)}) if lengths else [longest]
    first = size_option(Option(rung, candidates[0], measure(rung, candidates[0])), budget, memory_mb, shape)
    if not first.fits:
        return first  # the shortest length does not fit: a longer one would not either
    fitting = [first]
    for length in candidates[1:]:
        if not size_option(rescaled(fitting[-1], lengths, length), budget, memory_mb, shape).fits:
            break
        measured = size_option(Option(rung, length, measure(rung, length)), budget, memory_mb, shape)
        if not measured.fits:
            break
        fitting.append(measured)
    best = fitting[-1]  # a rung with steps: the longest length that leaves time for its epochs
    scored = [o for o in fitting if o.measurement.validation_score is not None]
    if first.measurement.whole_run_seconds is not None and len(scored) > 1:
        # a probe of a fitting step was the whole run: its validation score is the run's, so choose by it
        best = max(scored, key=lambda o: (o.measurement.validation_score, -o.max_length))
        best.scores = {o.max_length: o.measurement.validation_score for o in scored}
        scores = ", ".join(f"{o.measurement.validation_score:.4f} at {o.max_length}" for o in scored)
        best.reasons.append(
            f"max_length {best.max_length}: the {rung.label} probes, each a whole run, scored validation {scores} "
            "(the test split was left out of them)"
        )
    elif best.max_length != longest:
        best.reasons.append(
            f"max_length {best.max_length}, not {longest} (95% of the examples whole): {rung.label} over the first "
            f"{best.max_length} tokens fits the budget"
            + (f" with {best.epochs:g} epochs" if best.measurement.whole_run_seconds is None else "")
            + f"; over {candidates[candidates.index(best.max_length) + 1]} it would not"
        )
    return best


def batch_size(cfg: Config, rows: int, kind: str) -> int:
    if "batch_size" in cfg.train.model_fields_set:
        return cfg.train.batch_size
    if kind == defaults.CLASSIFIER:
        return 16 if rows >= 512 else 8
    return cfg.train.batch_size


def write_plan(raw, chosen: Option, budget, memory_mb, reasons, cfg, kind, rows, batch) -> dict:
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
    train["time_budget"] = budget
    reasons.append(
        f"train.time_budget {format_seconds(budget)}: the run re-sizes its schedule if this machine runs slower "
        "than the probe"
    )
    reasons.append(
        f"predicted: {chosen.predicted_seconds:.0f} s for the whole run and {m.peak_memory_mb:,.0f} MB peak "
        f"memory (probe of {PROBE_STEPS} steps on this machine{', cached' if m.cached else ''})"
    )
    planned["plan"] = {
        "budget_seconds": budget,
        "memory_limit_mb": round(memory_mb),
        "predicted_seconds": round(chosen.predicted_seconds, 1),
        "predicted_peak_memory_mb": m.peak_memory_mb,
        "host": host_description(),
        "reasons": reasons,
    }
    config_from_dict(copy.deepcopy(planned))  # what is written is a valid config
    header = ["# Written by `tunesmith plan`. Why each choice was made:"] + [f"#  - {r}" for r in reasons]
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
