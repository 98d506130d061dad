"""The YAML schema (pydantic models), loading, and --set overrides."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tunesmith import registry
from tunesmith.errors import TunesmithError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_DURATION_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(value: Any) -> float:
    """'20m', '90s', '1.5h', '1h30m' or a number of seconds -> seconds (ValueError otherwise)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)(hr|h|min|m|sec|s)", text)
        if not parts or "".join(a + b for a, b in parts) != text:
            raise ValueError(f"'{value}' is not a duration; write e.g. 90s, 20m, 1.5h or 1h30m (or seconds)")
        seconds = sum(float(amount) * _DURATION_UNITS[unit] for amount, unit in parts)
    if seconds <= 0:
        raise ValueError(f"{value} must be longer than zero")
    return seconds


class ModelConfig(Section):
    name: str = Field(description="local HF folder, hub id, or .gguf file")
    gguf_file: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False  # .bin/.pt weights can run code when unpickled: refused unless set
    revision: str | None = None
    attn_implementation: str | None = "sdpa"
    quantization: Literal["none", "int8"] = Field(
        "none",
        description="int8: the base's linear layers load 8-bit (bitsandbytes LLM.int8) under lora adapters "
        "(causal LMs): a quarter of the stored base weights; on a CPU no faster (docs/speed.md); qlora: 4-bit",
    )


# train.kernels' names (tunesmith.training.kernels implements them; config sits below training, so they are here)
KERNEL_NAMES = ("chunked_ce", "liger_ce", "liger_rms_norm", "liger_rope", "liger_swiglu")

# data.test_ratio: auto holds out AUTO_TEST_RATIO of train_file from AUTO_TEST_MIN_ROWS rows up: the test split
# then has at least 30 examples (an accuracy's standard error under 9 points); below that, a test figure is too
# noisy to be worth the rows it takes from training, and the run reports validation alone.
AUTO_TEST_RATIO = 0.1
AUTO_TEST_MIN_ROWS = 300


class MixSource(Section):
    """One more training source for data.mix: its file and its weight beside data.train_weight."""

    file: str
    weight: float = Field(
        gt=0, description="this source's share of each epoch is weight / the sum of weights"
    )


class ReplaySettings(Section):
    """data.replay: a share of every epoch drawn from general text, against forgetting (docs/evaluation.md)."""

    share: float = Field(
        0.05, gt=0, lt=0.5, description="the share of each epoch's training rows that are replay rows"
    )
    source: str = Field(
        "self",
        description="self: the base model's own answers to `prompts`, generated once before training and cached "
        "by model fingerprint; or a file of general text (.txt, one text per line) or of rows (text, chat "
        "messages, prompt/response)",
    )
    prompts: str = Field(
        "builtin",
        description="self-replay's prompts: builtin (general instructions shipped with tunesmith), train (the "
        "training data's own prompts) or a file (.txt, one prompt per line)",
    )
    max_prompts: int = Field(64, gt=0, description="self-replay: answer at most this many prompts")
    max_new_tokens: int = Field(
        192, gt=0, description="self-replay: answers that do not end within this many tokens are left out"
    )
    temperature: float = Field(
        0.7, ge=0, description="self-replay: 0 is greedy; sampling is seeded (data.seed)"
    )


class DataConfig(Section):
    train_file: str
    validation_file: str | None = None
    validation_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    test_file: str | None = Field(
        None,
        description="held-out test data: scored once at the end, never read in training or model selection",
    )
    test_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | Literal["auto"] = Field(
        "auto",
        description="without test_file: hold out this share of train_file (seeded, stratified for "
        f"classification) as the test split, before validation is split off; auto: {AUTO_TEST_RATIO:g} when "
        f"train_file has at least {AUTO_TEST_MIN_ROWS} valid rows, none below (0 turns it off)",
    )
    format: Literal["auto", "prompt_response", "alpaca", "chat", "text"] = "auto"
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    tools_field: str = Field(
        "tools", description="chat rows: the list of function definitions (docs/tools.md)"
    )
    text_field: str = "text"
    template: str = Field(
        "auto", description="auto | classic | chat | tools (docs/tools.md) | a .jinja file | inline Jinja"
    )
    system_prompt: str | None = None
    max_length: int = Field(1024, ge=8)
    on_overflow: Literal["auto", "drop", "truncate", "head_tail", "windows"] = Field(
        "auto",
        description="auto: drop for causal-lm, truncate for classification (counted either way); head_tail "
        "(text classification): keep the first 3/4 and the last 1/4 of max_length tokens; windows (text "
        "classification): cut long texts into consecutive max_length windows, train on each, and predict a "
        "text from the mean of its windows' log-probabilities (classification.max_windows in training)",
    )
    on_error: Literal["stop", "skip"] = "stop"
    deduplicate: bool = True
    loss_on: Literal["response", "all"] = "response"
    train_turns: Literal["all", "last"] = Field(
        "all", description="chat data: learn every assistant turn, or only the last one of each conversation"
    )
    train_reasoning: bool = Field(
        True, description="chat data: learn assistant reasoning (<think>...</think>) as well as the answer"
    )
    reasoning_history: Literal["drop", "keep"] = Field(
        "drop",
        description="reasoning of assistant turns before the last user turn: left out (as Qwen3 renders) or kept",
    )
    packing: bool = False
    max_examples: int | None = Field(None, gt=0)
    seed: int = 42
    mix: list[MixSource] = Field(
        default_factory=list,
        description="more training sources, each with a weight: every epoch holds all of train_file and, per "
        "source, weight / train_weight times as many rows drawn from it (seeded; shuffled in with the rest)",
    )
    train_weight: float = Field(1.0, gt=0, description="train_file's weight beside data.mix's sources")
    replay: ReplaySettings | None = Field(
        None,
        description="replay general text against forgetting: {share, source, prompts} (docs/evaluation.md)",
    )


class MethodConfig(Section):
    """method: which method trains, and each method's own settings (lora:, freeze:, features:): a section a method
    registers with its settings class (tunesmith.methods: `Method(..., section=, settings=)`), validated by that
    class and read through section(key), as written or its defaults."""

    # `strategy` is accepted as another spelling of `name` (the word classification users look for).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    name: str = Field(
        "lora",
        validation_alias=AliasChoices("name", "strategy"),
        description="a registered method: lora, qlora, dora, last_n (freeze), head, full, features",
    )
    last_n: int | None = Field(
        None, ge=0, description="last_n: train the last N blocks plus the head (short for freeze.last_n)"
    )
    # Every registered method section (registry.register_method), as written or its defaults; serialized as the
    # keys they are written under (method.lora), so dumps, `tunesmith compare` and `plan` see them.
    method_sections: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "name" in raw and "strategy" in raw:
            raise ValueError("method: give either name or strategy (two spellings of one key), not both")
        return raw

    @model_validator(mode="before")
    @classmethod
    def _mount_method_sections(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        registry.load_plugins()
        raw, problems = dict(raw), []
        sections = dict(raw.get("method_sections") or {})  # kept when a field is assigned after validation
        for key in [k for k in raw if k in registry.METHOD_SECTIONS]:  # as written, in the order written
            try:
                sections[key] = registry.METHOD_SECTIONS[key].model_validate(raw.pop(key) or {})
            except ValidationError as exc:
                problems += [_describe(e | {"loc": ("method", key, *e["loc"])}) for e in exc.errors()]
        for key, settings in registry.METHOD_SECTIONS.items():  # the rest: their defaults
            sections.setdefault(key, settings())
        if problems:
            raise SectionProblems(problems)
        raw["method_sections"] = sections
        return raw

    def section(self, key: str) -> Any:
        """A method's own settings (e.g. section("lora") for lora, dora and qlora): as written, or the defaults."""
        if key not in self.method_sections:
            raise KeyError(f"method.{key}: no registered method has this section")
        return self.method_sections[key]

    @model_serializer(mode="wrap")
    def _with_sections(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict:
        data = handler(self)
        for key, section in self.method_sections.items():
            values = section.model_dump(mode=info.mode, exclude_unset=info.exclude_unset)
            if values or not info.exclude_unset:
                data[key] = values
        return data

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        registry.get_method(value, key=None)  # unknown: one line with a did-you-mean
        return value

    @model_validator(mode="after")
    def _last_n_in_one_place(self) -> MethodConfig:
        """method.last_n is a shorter spelling of the setting of that name (freeze's): copied into its section,
        still written once, where the config wrote it."""
        self.model_fields_set.discard("method_sections")  # set by the mounting, not by the config
        if self.last_n is not None:
            for section in self.method_sections.values():
                if "last_n" in type(section).model_fields:
                    written = "last_n" in section.model_fields_set
                    section.last_n = self.last_n
                    if not written:
                        section.model_fields_set.discard("last_n")
        return self


class TrainConfig(Section):
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "cosine"
    warmup: float = Field(0.03, ge=0, description="steps, or a fraction of total steps when < 1")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="auto: on when a step's estimated activations exceed half the free memory"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 where a measured probe shows it faster (GPUs, AVX-512 BF16/AMX), else fp32",
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the blocks; auto: on when the time saved exceeds the compile time"
    )
    seed: int = 42
    logging_steps: int = Field(5, gt=0)
    eval_steps: int | None = Field(None, gt=0, description="default: once per epoch-ish")
    save_steps: int | None = Field(None, gt=0, description="default: same as eval_steps")
    save_total_limit: int = Field(2, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    metric: str = "eval_loss"
    greater_is_better: bool | None = None
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = []
    sparse_lm_head: bool = Field(
        True, description="LM head and loss only at supervised positions (same loss, faster)"
    )
    kernels: str | list[str] = Field(
        "auto",
        description="auto: the LM head's loss kernel measured fastest here (and Liger's on CUDA); off; or a "
        f"list of: {', '.join(KERNEL_NAMES)}",
    )
    num_threads: int | None = Field(
        None,
        gt=0,
        description="torch's CPU threads; default: the cores other processes leave free, measured every step",
    )
    load_best: bool = Field(True, description="end with the best checkpoint's weights (train.metric)")
    class_weights: bool = Field(
        False, description="classification: weight the loss by inverse class frequency"
    )
    layer_lr_decay: float | None = Field(
        None, gt=0, le=1, description="classification: each lower block's LR is this times the one above"
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = "ddp"  # engine used when run on several processes
    launcher: Literal["torchrun", "ray"] = Field(
        "torchrun", description="what starts the workers of --nproc: torchrun, or Ray Train on a Ray cluster"
    )
    zero_stage: Literal[2, 3] = Field(
        2,
        description="train.distributed deepspeed: ZeRO stage 2 (optimizer and gradients sharded) or 3 (weights too)",
    )
    time_budget: float | None = Field(
        None,
        description="the whole run ends within this wall time (e.g. 20m, 1h): steps and LR schedule are "
        "re-sized from the measured speed; never lengthens a run",
    )

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("kernels", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        # YAML reads a bare `off` (and `no`, `false`) as False: it means off, and true (`on`) auto
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("kernels")
    @classmethod
    def _known_kernels(cls, value: str | list[str]) -> str | list[str]:
        if value in ("auto", "off"):
            return value
        names = [value] if isinstance(value, str) else value
        for name in names:
            if name not in KERNEL_NAMES:
                close = difflib.get_close_matches(name, [*KERNEL_NAMES, "auto", "off"], n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ValueError(
                    f"unknown kernel '{name}'; {hint}use auto, off or a list of {', '.join(KERNEL_NAMES)}"
                )
        if {"chunked_ce", "liger_ce"} <= set(names):
            raise ValueError("chunked_ce and liger_ce are two ways to compute the same loss; keep one")
        return list(dict.fromkeys(names))


class EvalConfig(Section):
    before_training: bool = True
    batch_size: int = Field(8, gt=0)
    samples: int = Field(3, ge=0, description="held-out examples generated before and after training")
    max_new_tokens: int = Field(64, gt=0)
    generations: int = Field(
        32, ge=0, description="`tunesmith eval`: examples generated for ROUGE/BLEU/exact match (0: none)"
    )
    train_generations: int = Field(
        16,
        ge=0,
        description="seq2seq: validation examples generated at each evaluation in training for ROUGE/BLEU (0: loss only)",
    )
    reference: str | None = Field(
        None,
        description="forgetting check: general text (causal-lm perplexity) or a labelled reference task "
        "(classification: linear-probe accuracy), scored before and after training",
    )
    reference_field: str = "text"
    reference_max_examples: int = Field(200, gt=0)
    forgetting_threshold: float = Field(
        10.0, gt=0, description="warn when the reference perplexity (or accuracy) drifts by more, in percent"
    )
    overfit_patience: int = Field(
        3,
        gt=0,
        description="flag overfitting after this many rising validation losses while train loss falls",
    )
    benchmarks: list[str] = Field(
        default_factory=list,
        description="lm-eval benchmarks scored before and after training: multiple-choice .jsonl files, "
        "lm-eval task .yaml files pointing at local data, or `capitals` (the built-in knowledge probe)",
    )


class SearchDimension(Section):
    """One dimension of a sweep: a numeric range (low..high, optionally log-scaled or integer) or choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchDimension:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices: give at least one value")
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices (a list)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self


class SweepConfig(Section):
    space: dict[str, SearchDimension] = Field(
        default_factory=dict, description="config key (e.g. train.learning_rate) -> range or choices"
    )
    trials: int = Field(10, gt=0)
    metric: str | None = Field(None, description="default: train.metric")
    direction: Literal["minimize", "maximize"] | None = Field(None, description="default: from the metric")
    storage: str | None = Field(
        None, description="an Optuna database URL; default: SQLite in the sweep folder"
    )
    study_name: str | None = None
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = Field(2, ge=0, description="trials finished before pruning starts")
    keep_checkpoints: bool = Field(
        False, description="keep each finished trial's checkpoints/ (its model/ and reports are always kept)"
    )


class OutputConfig(Section):
    dir: str = "runs"
    name: str | None = None
    cache_dir: str | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in {".", ".."}):
            raise ValueError("must be a plain folder name (no '/')")
        return value


class PlanConfig(Section):
    """What `tunesmith plan` predicted for this config (it writes this section); run.json sets it beside the actual."""

    budget_seconds: float | None = None
    memory_limit_mb: float | None = None
    predicted_seconds: float | None = Field(None, description="the whole run, data to report")
    predicted_peak_memory_mb: float | None = None
    host: str | None = Field(None, description="the machine the probe ran on")
    reasons: list[str] = []


class Config(Section):
    task: str = Field(
        default_factory=registry.default_task,
        description="what to learn: a registered task (`tunesmith init`)",
    )
    model: ModelConfig
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)  # built on use: it reads the registry
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    sweep: SweepConfig | None = None
    plan: PlanConfig | None = None
    # Sections that tasks own (registry.register_section), validated by their own classes; written back as
    # top-level keys by dump_config. Read one through section(key).
    task_sections: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _mount_task_sections(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        registry.load_plugins()
        raw, sections, problems = dict(raw), {}, []
        for key in [k for k in raw if k in registry.SECTIONS and k not in cls.model_fields]:
            try:
                sections[key] = registry.SECTIONS[key].model_validate(raw.pop(key) or {})
            except ValidationError as exc:
                problems += [_describe(e | {"loc": (key, *e["loc"])}) for e in exc.errors()]
        if problems:
            raise ValueError("; ".join(problems))
        raw["task_sections"] = sections
        return raw

    def section(self, key: str) -> Any:
        """A task's own config section (registry.register_section): as written, or its defaults."""
        return self.task_sections.get(key) or registry.SECTIONS[key]()

    @model_serializer(mode="wrap")
    def _with_task_sections(self, handler, info) -> dict[str, Any]:
        """model_dump and model_dump_json write each task section back under its own key (`tunesmith plan`'s
        configs, the comparison page's settings), as dump_config does."""
        raw = handler(self)
        for key, section in self.task_sections.items():
            raw[key] = section.model_dump(mode=info.mode, exclude_unset=info.exclude_unset)
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        test_ratio = AUTO_TEST_RATIO if self.data.test_ratio == "auto" else self.data.test_ratio
        if (
            self.data.test_file is None
            and self.data.validation_file is None
            and (test_ratio + self.data.validation_ratio >= 1)
        ):
            raise ValueError(
                f"data.test_ratio ({self.data.test_ratio}) + data.validation_ratio must leave some of train_file "
                "for training"
            )
        if self.train.save_steps and self.train.eval_steps and self.train.save_steps % self.train.eval_steps:
            raise ValueError(
                "train.save_steps must be a multiple of train.eval_steps (the best checkpoint is chosen at evaluations)"
            )
        # What each task and method allows is declared by the task and the method themselves (tunesmith.registry).
        task = registry.get_task(self.task, key=None)
        method = registry.get_method(self.method.name, key=None)
        problems = task.config_problems(self) + method.config_problems(self, task.provides)
        if isinstance(self.train.kernels, list) and "kernels" not in task.provides:
            problems.append(
                f"train.kernels: the LM head's loss and Liger kernels are for causal LMs, not {self.task}; use auto or off"
            )
        if (self.data.mix or self.data.replay) and "replay" not in task.provides:
            problems.append(
                f"data.mix and data.replay are not for {self.task}: {task.no_replay}; remove them"
            )
        if problems:
            raise ValueError("; ".join(problems))
        if self.data.on_overflow == "auto":
            self.data.on_overflow = task.default_overflow
        return self

    @field_validator("task")
    @classmethod
    def _registered(cls, value: str) -> str:
        registry.get_task(value, key=None)  # unknown: one line with a did-you-mean
        return value


class SectionProblems(ValueError):
    """A mounted section's problems, each already a full 'key.path: problem' line (validate() lists them)."""

    def __init__(self, lines: list[str]):
        super().__init__("; ".join(lines))
        self.lines = lines


def _lines(error: dict[str, Any]) -> list[str]:
    """The lines one validation error becomes: one, or a mounted section's own lines."""
    raised = error.get("ctx", {}).get("error")
    return raised.lines if isinstance(raised, SectionProblems) else [_describe(error)]


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        if path in registry.MOVED:  # a key a task's own section holds now (registry.register_section)
            return f"{path}: moved to {' or '.join(registry.MOVED[path])}; write it there"
        parent, key = error["loc"][:-1], str(error["loc"][-1])
        allowed = _allowed_keys(parent)
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(allowed))}"
        return f"{path}: unknown key; {hint}"
    if kind == "missing":
        return f"{path}: required key is missing; add it"
    got = error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    if (
        kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error"}
        or kind.endswith("_type")
        or kind.endswith("_parsing")
    ):
        return f"{path}: {message.lower()} (got {got!r})"
    return f"{path}: {message}" if path else message


def _allowed_keys(parent: tuple) -> list[str]:
    model: type[BaseModel] = Config
    if parent and str(parent[0]) in registry.SECTIONS:
        model, parent = registry.SECTIONS[str(parent[0])], parent[1:]
    elif not parent:
        return [k for k in Config.model_fields if k != "task_sections"] + list(registry.SECTIONS)
    for part in parent:
        if model is MethodConfig and str(part) in registry.METHOD_SECTIONS:  # a method's own section
            model = registry.METHOD_SECTIONS[str(part)]
            continue
        field = model.model_fields.get(str(part))
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    if model is MethodConfig:
        return [k for k in model.model_fields if k != "method_sections"] + list(registry.METHOD_SECTIONS)
    return list(model.model_fields)


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """Parse `a.b.c=value` strings; values are YAML scalars (1e-4, true, [q_proj, v_proj])."""
    parsed = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TunesmithError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.learning_rate=1e-4")
        try:
            parsed_value = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed_value = value
        parsed.append((key.strip().split("."), parsed_value))
    return parsed


def set_key(raw: dict[str, Any], keys: list[str], value: Any, where: str) -> None:
    """Set raw[k1][k2]...[kn] = value, creating sections; `where` names the setting in the error."""
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise TunesmithError(f"{where}: '{'.'.join(keys[: depth + 1])}' is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for keys, value in parse_overrides(overrides):
        set_key(raw, keys, value, f"--set {'.'.join(keys)}")
    return raw


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw mapping; every problem becomes one line naming its key path."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [line for e in exc.errors() for line in _lines(e)]
        raise TunesmithError(
            f"{source}: {len(lines)} problem(s) in the config", [f"  {line}" for line in lines]
        ) from None


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TunesmithError(
            f"{path}: config file not found; create one with `tunesmith init sft > {path.name}`"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise TunesmithError(f"{path}{where}: {problem}; fix the YAML syntax there") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TunesmithError(
            f"{path}: the top level must be a mapping with sections model, data, method, train, eval, output"
        )
    return raw


def _resolve_paths(config: Config, base: Path) -> Config:
    """Make file paths relative to the config file absolute, so the saved config works from anywhere."""

    def resolve(value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())

    config.data.train_file = resolve(config.data.train_file)
    config.data.validation_file = resolve(config.data.validation_file)
    config.data.test_file = resolve(config.data.test_file)
    for source in config.data.mix:
        source.file = resolve(source.file)
    replay = config.data.replay
    if replay is not None:  # `self`, `builtin` and `train` are names, not files
        replay.source = replay.source if replay.source == "self" else resolve(replay.source)
        replay.prompts = replay.prompts if replay.prompts in ("builtin", "train") else resolve(replay.prompts)
    config.eval.reference = resolve(config.eval.reference)
    # a file (.jsonl, .yaml) is resolved; a built-in probe's name (no suffix) is kept
    config.eval.benchmarks = [resolve(b) if Path(b).suffix else b for b in config.eval.benchmarks]
    config.output.dir = resolve(config.output.dir)
    name = Path(config.model.name).expanduser()
    if not name.is_absolute() and (base / name).exists():
        config.model.name = str((base / name).resolve())
    template = config.data.template
    if template.endswith(".jinja") and not Path(template).is_absolute():
        config.data.template = resolve(template)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a YAML config; raise TunesmithError with one line per problem."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides or [])
    return _resolve_paths(validate(raw, source=str(path)), path.parent.resolve())


def config_from_dict(
    raw: dict[str, Any], base: str | Path = ".", overrides: list[str] | None = None
) -> Config:
    """Build a validated Config from a Python mapping (the notebook route); the mapping itself is left as it was."""
    raw = apply_overrides(copy.deepcopy(raw), overrides or [])
    return _resolve_paths(validate(raw, source="config"), Path(base).resolve())


def dump_config(config: Config, path: Path) -> None:
    """The settings as written (file paths absolute); unset keys stay unset, so a rerun chooses the same
    run-time defaults (tunesmith.tasks.defaults) instead of pinning the schema's."""
    raw = config.model_dump(
        mode="json", exclude_unset=True, exclude={"sweep"} if config.sweep is None else None
    )
    for name in type(config).model_fields:  # a section left out whose keys were resolved after loading
        section = getattr(config, name)  # (output.dir made absolute) is written with those keys
        if name not in raw and isinstance(section, BaseModel) and section.model_fields_set:
            raw[name] = section.model_dump(mode="json", exclude_unset=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


STARTERS_DIR = Path(__file__).parent / "starters"  # one commented YAML per starter; a new task adds its file


def _starter_files() -> dict[str, Path]:
    """Starters by name: tunesmith/starters/*.yaml and each task package's starters/*.yaml (found without
    importing the tasks, so that every command starts fast)."""
    task_starters = sorted((Path(__file__).parent / "tasks").glob("*/starters/*.yaml"))
    return {path.stem: path for path in [*sorted(STARTERS_DIR.glob("*.yaml")), *task_starters]}


def starter_names() -> list[str]:
    return sorted(_starter_files())


def starter_config(kind: str) -> str:
    """The commented starter config `tunesmith init KIND` prints."""
    path = _starter_files().get(kind)
    if path is None:
        raise TunesmithError(
            f"tunesmith init {kind}: unknown starter; available: {', '.join(starter_names())}"
        )
    return path.read_text(encoding="utf-8")
