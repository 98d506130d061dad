"""The YAML schema (pydantic models), loading, and --set overrides."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunesmith.errors import TunesmithError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field(description="local HF folder, hub id, or .gguf file")
    gguf_file: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False  # .bin/.pt weights can run code when unpickled: refused unless set
    revision: str | None = None
    attn_implementation: str | None = "sdpa"


class DataConfig(Section):
    train_file: str
    validation_file: str | None = None
    validation_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    format: Literal["auto", "prompt_response", "alpaca", "chat", "text"] = "auto"
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    text_field: str = "text"
    template: str = Field("auto", description="auto | classic | chat | a .jinja file | inline Jinja")
    system_prompt: str | None = None
    max_length: int = Field(1024, ge=8)
    on_overflow: Literal["auto", "drop", "truncate", "head_tail", "windows"] = Field(
        "auto",
        description="auto: drop for causal-lm, truncate for classification (counted either way); head_tail "
        "(text classification): keep the first 3/4 and the last 1/4 of max_length tokens; windows (text "
        "classification): cut long texts into consecutive max_length windows, train on each, and predict a "
        "text from the mean of its windows' log-probabilities",
    )
    max_windows: int = Field(
        4,
        ge=1,
        description="on_overflow windows: the most windows of one text used in training (the first ones); "
        "evaluation and prediction read every window",
    )
    on_error: Literal["stop", "skip"] = "stop"
    deduplicate: bool = True
    loss_on: Literal["response", "all"] = "response"
    packing: bool = False
    max_examples: int | None = Field(None, gt=0)
    seed: int = 42
    # classification tasks
    label_field: str = "label"
    text_pair_field: str | None = None
    file_field: str = Field(
        "path", description="image/audio tables: the file path column (relative to the table)"
    )
    labels: list[str] | None = Field(None, description="the label set and its order; default: those in train")
    multi_label: bool = False
    label_separator: str = Field("|", description="multi-label CSV cells: labels joined by this")
    augment: bool = Field(False, description="images: random resized crop and horizontal flip in training")
    clip_seconds: float = Field(1.0, gt=0, description="audio: clips are cut or zero-padded to this length")


class LoraConfig(Section):
    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class FreezeConfig(Section):
    last_n: int = Field(2, ge=0, description="train the last N blocks plus the head")
    train_embeddings: bool = False


class FeaturesConfig(Section):
    classifier: Literal["logistic_regression"] = "logistic_regression"
    C: float = Field(1.0, gt=0, description="inverse regularization strength")
    max_iter: int = Field(2000, gt=0)


CLASSIFICATION_TASKS = ("text-classification", "image-classification", "audio-classification")


class MethodConfig(Section):
    # `strategy` is accepted as another spelling of `name` (the word classification users look for).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    name: Literal["lora", "qlora", "dora", "last_n", "freeze", "head", "full", "features"] = Field(
        "lora", validation_alias=AliasChoices("name", "strategy")
    )
    last_n: int | None = Field(None, ge=0, description="last_n: train the last N blocks plus the head")
    lora: LoraConfig = LoraConfig()
    freeze: FreezeConfig = FreezeConfig()
    features: FeaturesConfig = FeaturesConfig()

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "name" in raw and "strategy" in raw:
            raise ValueError("method: give either name or strategy (two spellings of one key), not both")
        return raw

    @model_validator(mode="after")
    def _last_n_in_one_place(self) -> MethodConfig:
        if self.last_n is not None:
            self.freeze.last_n = self.last_n
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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
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
    num_threads: int | None = Field(None, gt=0)
    load_best: bool = Field(True, description="end with the best checkpoint's weights (train.metric)")
    class_weights: bool = Field(
        False, description="classification: weight the loss by inverse class frequency"
    )
    layer_lr_decay: float | None = Field(
        None, gt=0, le=1, description="classification: each lower block's LR is this times the one above"
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = "ddp"  # engine used when run on several processes


class EvalConfig(Section):
    before_training: bool = True
    batch_size: int = Field(8, gt=0)
    samples: int = Field(3, ge=0, description="held-out examples generated before and after training")
    max_new_tokens: int = Field(64, gt=0)
    generations: int = Field(
        32, ge=0, description="`tunesmith eval`: examples generated for ROUGE/BLEU/exact match (0: none)"
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


class PreferenceConfig(Section):
    """task: preference. The objective, its strength, and the names of the data's fields."""

    loss: Literal["dpo", "ipo", "orpo", "simpo", "kto"] = "dpo"
    beta: float = Field(0.1, gt=0, description="how far from the reference the policy may move (ipo: tau)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="dpo, simpo: chance a preference is flipped"
    )
    gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of desirable answers' loss")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of undesirable answers' loss")
    precompute_reference: bool = Field(
        False, description="reference log-probabilities computed once before training and cached"
    )
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    completion_field: str = Field("completion", description="kto's unpaired rows: the answer")
    label_field: str = Field("label", description="kto's unpaired rows: true (desirable) or false")


class Config(Section):
    task: Literal["causal-lm", "text-classification", "image-classification", "audio-classification"] = (
        "causal-lm"
    )
    model: ModelConfig
    data: DataConfig
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    preference: PreferenceConfig = PreferenceConfig()
    sweep: SweepConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.train.save_steps and self.train.eval_steps and self.train.save_steps % self.train.eval_steps:
            raise ValueError(
                "train.save_steps must be a multiple of train.eval_steps (the best checkpoint is chosen at evaluations)"
            )
        classification = self.task in CLASSIFICATION_TASKS
        if self.method.name == "features" and not classification:
            raise ValueError("method.name: features (feature extraction) is for classification tasks")
        if self.method.name == "qlora" and classification:
            raise ValueError("method.name: qlora is for causal-lm; use lora for classification")
        if (self.train.class_weights or self.train.layer_lr_decay) and not classification:
            raise ValueError("train.class_weights and train.layer_lr_decay are for classification tasks")
        if self.eval.reference and self.method.name == "features":
            raise ValueError(
                "eval.reference: method features never changes the network, so nothing can be forgotten"
            )
        if self.data.multi_label and self.task != "text-classification":
            raise ValueError("data.multi_label is supported for text-classification")
        if self.data.on_overflow in ("head_tail", "windows") and (
            self.task != "text-classification" or self.data.text_pair_field
        ):
            raise ValueError(
                f"data.on_overflow: {self.data.on_overflow} is for text-classification of single texts (no text pair)"
            )
        if self.data.on_overflow == "auto":
            self.data.on_overflow = "truncate" if classification else "drop"
        return self


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
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
    for part in parent:
        field = model.model_fields.get(str(part))
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
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
        lines = [_describe(e) for e in exc.errors()]
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
    config.eval.reference = resolve(config.eval.reference)
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
    """Build a validated Config from a Python mapping (the notebook route)."""
    raw = apply_overrides(dict(raw), overrides or [])
    return _resolve_paths(validate(raw, source="config"), Path(base).resolve())


def dump_config(config: Config, path: Path) -> None:
    raw = config.model_dump(mode="json", exclude={"sweep"} if config.sweep is None else None)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


STARTER_SFT = """\
# tunesmith supervised fine-tuning config. Every key is optional unless marked required.
# Validate your data alone with:  tunesmith data check this.yaml
# Override any key at run time:   tunesmith train this.yaml --set train.learning_rate=1e-4
task: causal-lm

model:
  name: path/to/model-folder        # required: a local HF folder, a hub id, or a .gguf file
  dtype: float32                     # float32 | bfloat16 | float16 | auto (weights; compute precision is train.precision)
  trust_remote_code: false           # never runs model code from the hub unless you turn this on

data:
  train_file: data/train.jsonl       # required: .jsonl, .json, .csv, .parquet, or a saved `datasets` folder
  validation_file: null              # or split off validation_ratio of train_file (seeded)
  validation_ratio: 0.1
  format: auto                       # auto | prompt_response | alpaca | chat | text
  prompt_field: prompt               # field names for prompt_response rows
  response_field: response
  template: auto                     # auto (chat template if the tokenizer has one) | classic | chat | my_template.jinja
  max_length: 1024                   # tokens; longer examples are counted and reported
  on_overflow: drop                  # drop | truncate
  on_error: stop                     # stop (list every bad row) | skip (drop them, report the count)
  deduplicate: true                  # drop exact duplicate examples (reported)
  loss_on: response                  # response (prompt tokens masked) | all
  packing: false                     # pack examples into max_length rows, no attention across examples

method:
  name: lora                         # lora | qlora | dora | freeze | full
  lora:
    r: 8
    alpha: 16
    dropout: 0.05
    target_modules: all-linear       # or a list, e.g. [q_proj, v_proj]
  freeze:
    last_n: 2                        # for method freeze: train the last N blocks plus the head

train:
  batch_size: 4
  grad_accum: 1
  epochs: 1
  max_steps: null                    # set to stop after N optimizer steps
  learning_rate: 2.0e-4
  scheduler: cosine
  warmup: 0.03                       # steps, or a fraction of all steps when < 1
  weight_decay: 0.0
  max_grad_norm: 1.0
  gradient_checkpointing: auto       # auto: on when a step's activations would not fit in memory | true | false
  precision: auto                    # auto (bf16 where the hardware runs it fast) | fp32 | bf16 | fp16
  seed: 42
  logging_steps: 5
  eval_steps: null                   # default: about 5 evaluations per run
  save_steps: null                   # default: eval_steps
  save_total_limit: 2                # the best checkpoint is always kept too
  early_stopping_patience: null      # stop after N evaluations without improvement
  metric: eval_loss
  report_to: []                      # any of tensorboard, wandb, mlflow; metrics.jsonl is always written
  distributed: ddp                   # ddp | fsdp | deepspeed, used with `tunesmith train --nproc N` or torchrun
  sparse_lm_head: true               # LM head + loss only where answers are supervised: same loss, less compute

eval:
  before_training: true              # validation loss of the untouched model, for comparison
  samples: 3                         # held-out examples generated before and after training
  max_new_tokens: 64
  generations: 32                    # `tunesmith eval`: examples generated for ROUGE, BLEU and exact match
  reference: null                    # general text (.txt, or a table with a `text` field) scored before and
                                     # after training: the forgetting check (perplexity drift, in percent)
  forgetting_threshold: 10.0         # warn when the reference perplexity drifts by more than this percent
  overfit_patience: 3                # flag overfitting after N rising validation losses while train loss falls

# Hyperparameter search (`tunesmith sweep this.yaml --trials 20`): uncomment and edit.
# sweep:
#   trials: 20
#   space:
#     train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}
#     method.lora.r: {choices: [4, 8, 16, 32]}
#     train.warmup: {low: 0, high: 0.1}
#   pruner: median                   # stop trials whose validation metric trails the median
#   storage: null                    # default: SQLite in the sweep folder; any Optuna URL shares the study

output:
  dir: runs                          # each run is a folder runs/<name>
  name: null                         # default: the config file's name
"""


STARTER_CLASSIFICATION = """\
# tunesmith {task} config. Every key is optional unless marked required.
# Validate your data alone with:  tunesmith data check this.yaml
# Label new data with the result:  tunesmith predict runs/<name> --input new_data{input_hint}
task: {task}

model:
  name: {model_hint}   # required: a local HF folder or a hub id

data:
  train_file: {data_hint}   # required: a folder with one sub-folder per label, or a table{table_hint}
  validation_file: null              # or hold out validation_ratio of each class (seeded)
  validation_ratio: 0.2
  label_field: label                 # tables: the label column{fields}
  labels: null                       # fix the label set and order; default: the labels found in train_file
  on_error: stop                     # stop (list every bad row or unreadable file) | skip (drop and count them)
{extra}
method:
  strategy: full                     # full | head (transfer learning) | last_n | lora | features
  last_n: 2                          # for last_n: the last N blocks plus the head train
  lora: {{r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear}}
  features: {{C: 1.0}}                 # for features: logistic regression on frozen embeddings

train:
  batch_size: 16
  epochs: 3
  learning_rate: 5.0e-5              # lower for full, higher for head and lora
  scheduler: linear
  warmup: 0.06
  weight_decay: 0.01
  metric: f1_macro                   # accuracy | f1_macro | f1_weighted | precision_macro | recall_macro | eval_loss
  early_stopping_patience: null
  class_weights: false               # weight the loss by inverse class frequency (imbalanced data)
  layer_lr_decay: null               # e.g. 0.9: each lower block learns 0.9x as fast as the one above
  precision: auto

output:
  dir: runs
"""

_CLASSIFICATION_HINTS = {
    "text-classification": {
        "input_hint": ".csv",
        "model_hint": "path/to/encoder-folder     ",
        "data_hint": "data/train.csv          ",
        "table_hint": " (.csv/.jsonl/.parquet)",
        "fields": "\n  text_field: text                   # tables: the text column\n  text_pair_field: null              # a second text column for pair tasks (e.g. NLI)\n  multi_label: false                 # several labels per row: a list, or 'a|b' in CSV",
        "extra": "  max_length: 256                    # tokens per text (or per window); longer texts are counted in the data report\n"
        "  on_overflow: truncate              # truncate | head_tail | windows (train on each window, predict from all)\n"
        "  max_windows: 4                     # windows: the most windows of one text used in training\n",
    },
    "image-classification": {
        "input_hint": "/ (a folder of images)",
        "model_hint": "path/to/vision-model-folder",
        "data_hint": "data/images/            ",
        "table_hint": " of paths",
        "fields": "\n  file_field: path                   # tables: the image path column (relative to the table)",
        "extra": "  augment: false                     # random resized crop + horizontal flip in training\n",
    },
    "audio-classification": {
        "input_hint": "/ (a folder of clips)",
        "model_hint": "path/to/audio-model-folder ",
        "data_hint": "data/clips/             ",
        "table_hint": " of paths",
        "fields": "\n  file_field: path                   # tables: the audio path column (relative to the table)",
        "extra": "  clip_seconds: 1.0                  # clips are resampled to the model's rate, then cut or padded\n",
    },
}

STARTERS = ("sft", *_CLASSIFICATION_HINTS)


def starter_config(kind: str) -> str:
    if kind == "sft":
        return STARTER_SFT
    if kind in _CLASSIFICATION_HINTS:
        return STARTER_CLASSIFICATION.format(task=kind, **_CLASSIFICATION_HINTS[kind])
    raise TunesmithError(f"tunesmith init {kind}: unknown starter; available: {', '.join(STARTERS)}")
