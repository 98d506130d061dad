"""The training loop: transformers' Trainer configured from our Config, with our data, callbacks and folders."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import shutil
import threading
import time
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import rotate_checkpoints

from tunesmith.config import Config
from tunesmith.console import say, world_size
from tunesmith.data.collate import IGNORE, PackedCollator, PadCollator, pad_token_id
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.lm import language_model_loss
from tunesmith.models.anatomy import transformer_blocks
from tunesmith.models.loading import default_cache_dir
from tunesmith.run_folder import RunFolder
from tunesmith.training.budget import TimeBudget
from tunesmith.training.callbacks import (
    GracefulStop,
    MetricsLogger,
    OverfitWatch,
    ProgressBar,
    TokenCounter,
    injected_faults,
)
from tunesmith.training.checkpoints import STAGING, commit, fault_point
from tunesmith.training.distributed import check_engine, per_device_batch
from tunesmith.training.kernels import HEAD_LOSSES, apply_liger, decide_kernels, describe
from tunesmith.training.memory import free_bytes
from tunesmith.training.threads import ThreadGovernor, governed


def planned_steps(cfg: Config, train_rows: int) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    steps_per_epoch = max(1, math.ceil(train_rows / cfg.train.batch_size) // cfg.train.grad_accum)
    return max(1, math.ceil(cfg.train.epochs * steps_per_epoch))


@contextlib.contextmanager
def own_weight_names(model):
    """Checkpoints hold the weights under the model's own names. transformers 5 saves some architectures (ViT)
    under their original checkpoint names by default, while the Trainer reloads a checkpoint (resume, the best
    one at the end) with a plain load_state_dict(strict=False): the names would not match and the weights in
    memory would silently stay. from_pretrained reads either naming; the run's exported model keeps the default."""
    if not isinstance(model, PreTrainedModel):  # a PEFT model saves its adapter's own names
        yield
        return
    model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_original_format=False)
    try:
        yield
    finally:
        del model.save_pretrained


class AtomicCheckpoints:
    """Trainer mixin: checkpoints are staged, checksummed (manifest) and renamed into place, never half-written;
    evaluations and checkpoint writes are left out of the training throughput (`counter`, a TokenCounter)."""

    counter = None

    def _excluded(self):
        return self.counter.excluded() if self.counter is not None else contextlib.nullcontext()

    def evaluate(self, *args, **kwargs):
        with self._excluded():
            return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        with self._excluded():
            self._save_checkpoint_atomically(model, trial)

    def _save_checkpoint_atomically(self, model, trial):
        """Stage the checkpoint in checkpoints/.partial, checksum it, then rename it into place."""
        root = Path(self.args.output_dir)
        staging = root / STAGING
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir = str(staging)
        try:
            # the model Trainer._save calls save_pretrained on (under torch.compile too)
            with own_weight_names(self.accelerator.unwrap_model(self.model, keep_torch_compile=False)):
                super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = str(root)
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        best = self.state.best_model_checkpoint  # every rank keeps this path: point it at the final name
        if best and Path(best).parent == staging:
            self.state.best_model_checkpoint = str(root / Path(best).name)
        if self.args.should_save:
            # trainer_state.json was written with the staging path; a resumed run reads it back
            self.state.save_to_json(str(staging / name / TRAINER_STATE_NAME))
            fault_point("before_checkpoint_commit", self.state.global_step)
            commit(staging / name, root / name, self.state.global_step)  # durable before anything is deleted
            rotate_checkpoints(
                str(root), self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=False
            )
        self.accelerator.wait_for_everyone()

    def _save_optimizer_and_scheduler(self, output_dir):
        fault_point("during_checkpoint_write", self.state.global_step)  # model written, optimizer not yet
        super()._save_optimizer_and_scheduler(output_dir)


class OwnEvaluation(AtomicCheckpoints):
    """Trainer mixin: an evaluation is `scores(rows, batch_size)` (metric name -> value, computed batch by batch, so
    no logits pile up), logged under the eval_ prefix with its runtime and handed to the callbacks as the Trainer's
    own evaluation is (metrics.jsonl, the best checkpoint, early stopping)."""

    def scores(self, rows: list, batch_size: int) -> dict:
        raise NotImplementedError

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        with self._excluded():
            started = time.perf_counter()
            rows = list(self.eval_dataset if eval_dataset is None else eval_dataset)
            scores = self.scores(rows, self.args.per_device_eval_batch_size)
            metrics = {f"{metric_key_prefix}_{name}": value for name, value in scores.items()}
            metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - started, 4)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics


@contextlib.contextmanager
def head_hands_back_hidden_states(head: torch.nn.Module):
    """For one forward, the LM head returns its input: the model's `logits` are the hidden states at the kept
    positions, for a head loss that projects them itself (training/kernels.py). The head keeps its weight, so
    names, tied embeddings and DDP's gradient hooks see the same parameter."""
    head.forward = _hidden_states  # an instance attribute: shadows the class's forward until deleted
    try:
        yield
    finally:
        del head.forward


def _hidden_states(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


class CausalLMTrainer(AtomicCheckpoints, Trainer):
    """Trainer that runs the LM head and loss only where the next token is supervised (train.sparse_lm_head).

    With the prompt masked, most positions never reach the loss, yet the plain path projects every one onto
    the whole vocabulary (49k columns for SmolLM2). The loss is the same sum over supervised tokens divided by
    the same count, so results match the plain path; bench/ measures the time saved. `head_loss` (train.kernels)
    says how the head and loss run there: the plain head (`sparse_head`), or a kernel given the hidden states of
    the supervised rows alone (`chunked_ce`, `liger_ce`) that never holds their logits whole.
    """

    sparse_lm_head = True
    head_loss = "sparse_head"  # train.kernels' decision: sparse_head, chunked_ce or liger_ce
    lm_head = None  # the model's output embeddings: chunked_ce and liger_ce project with its weight
    pad_token_id = 0

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Validation loss per supervised token over the whole split, the one definition `tunesmith eval` and the
        test split use too (the Trainer's own is a mean of per-batch means, which weighs short batches' tokens
        more); computed batch by batch, so no logits pile up."""
        with self._excluded():
            started = time.perf_counter()
            rows = list(self.eval_dataset if eval_dataset is None else eval_dataset)
            batch = self.args.per_device_eval_batch_size
            scores = language_model_loss(self.model_wrapped, rows, self.pad_token_id, batch)
            metrics = {
                f"{metric_key_prefix}_loss": scores["loss"],
                f"{metric_key_prefix}_runtime": round(time.perf_counter() - started, 4),
            }
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.sparse_lm_head or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        targets = inputs.pop("labels")[:, 1:]  # the token at t+1 is predicted at position t
        keep = targets.ne(IGNORE).any(dim=0).nonzero().squeeze(-1)
        picked = targets[:, keep]
        if self.head_loss not in (None, "sparse_head") and not return_outputs:
            with head_hands_back_hidden_states(self.lm_head):
                outputs = model(**inputs, logits_to_keep=keep)
            supervised = picked.ne(IGNORE)  # rows of other examples at a kept position are left out too
            loss = HEAD_LOSSES[self.head_loss](
                outputs.logits[supervised], self.lm_head.weight, picked[supervised]
            )
        else:
            outputs = model(**inputs, logits_to_keep=keep)
            logits = outputs.logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), picked.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
        count = num_items_in_batch if num_items_in_batch is not None else picked.ne(IGNORE).sum()
        loss = loss / count
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As the default path: DDP averages gradients over ranks, the count already covers all of them.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def training_arguments(
    cfg: Config,
    run: RunFolder,
    train_rows: int,
    has_validation: bool,
    precision: str,
    resuming: bool = False,
    model_layer_class: str | None = None,
    gradient_checkpointing: bool = False,
) -> TrainingArguments:
    t = cfg.train
    total = planned_steps(cfg, train_rows)
    eval_steps = t.eval_steps or max(1, total // 5)
    save_steps = t.save_steps or eval_steps
    metric = t.metric.removeprefix("eval_")
    greater = t.greater_is_better if t.greater_is_better is not None else not metric.endswith("loss")
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=per_device_batch(t.batch_size),
        per_device_eval_batch_size=cfg.eval.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        **{_CHECKPOINTING_ARGUMENT: gradient_checkpointing},  # decided (and recorded) by the recipe
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_validation else "no",
        # Evaluating through the Trainer before train() breaks DDP gradient sync (the model gets prepared
        # for evaluation first); eval_on_start evaluates inside the loop, after wrapping.
        eval_on_start=has_validation and cfg.eval.before_training and not resuming,
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=has_validation and t.load_best,
        metric_for_best_model=metric if has_validation else None,
        greater_is_better=greater if has_validation else None,
        report_to=list(t.report_to) or "none",
        remove_unused_columns=False,
        prediction_loss_only=True,  # never gather vocabulary-sized logits for a whole eval set: loss per batch
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not _cuda(),
        **engine_arguments(cfg, model_layer_class),
    )


# transformers renamed gradient_checkpointing to activation_checkpointing in 5.2x; accept either release.
_CHECKPOINTING_ARGUMENT = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)

_ENV_WE_SET: dict[str, str] = {}


def engine_arguments(cfg: Config, layer_class: str | None) -> dict:
    """TrainingArguments for the distributed engine; a no-op on one process."""
    if world_size() == 1 or cfg.train.distributed == "ddp":
        return {"ddp_backend": None if _cuda() else "gloo"} if world_size() > 1 else {}
    if cfg.train.distributed == "fsdp":
        wrap = {"transformer_layer_cls_to_wrap": [layer_class]} if layer_class else {}
        # use_orig_params lets FSDP shard a model whose parameters are partly frozen (LoRA, freeze).
        return {"fsdp": "full_shard auto_wrap", "fsdp_config": {**wrap, "use_orig_params": True}}
    check_engine("deepspeed")
    return {
        "deepspeed": {
            # stage 3 gathers the sharded weights when saving, so checkpoints and model/ hold whole tensors
            "zero_optimization": {"stage": cfg.train.zero_stage}
            | ({"stage3_gather_16bit_weights_on_model_save": True} if cfg.train.zero_stage == 3 else {}),
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"},
        }
    }


def _set_env(name: str, value: str) -> None:
    """Set a tracker variable unless the user set it themselves (ours from an earlier run are replaced)."""
    current = os.environ.get(name)
    if current is None or _ENV_WE_SET.get(name) == current:
        os.environ[name] = _ENV_WE_SET[name] = value


def point_trackers_at(run: RunFolder, cfg: Config) -> None:
    """Keep tracker files inside the run folder; W&B runs offline unless the user chose otherwise."""
    tracking = run.path / "tracking"
    for tracker in cfg.train.report_to:
        if importlib.util.find_spec(tracker) is None:
            raise TunesmithError(
                f"train.report_to: {tracker} is not installed; `pip install {tracker}` or remove it from report_to"
            )
    if "tensorboard" in cfg.train.report_to:
        _set_env("TENSORBOARD_LOGGING_DIR", str(tracking / "tensorboard"))
    if "wandb" in cfg.train.report_to:
        _set_env("WANDB_MODE", "offline")
        _set_env("WANDB_DIR", str(tracking))
    if "mlflow" in cfg.train.report_to:
        # A local file store needs no server; mlflow 3 asks for an explicit opt-in to it.
        _set_env("MLFLOW_TRACKING_URI", (tracking / "mlruns").as_uri())
        _set_env("MLFLOW_ALLOW_FILE_STORE", "true")


def _cuda() -> bool:
    return torch.cuda.is_available()


def standard_callbacks(
    cfg: Config, run: RunFolder, counter: TokenCounter, extra, has_validation: bool
) -> list:
    """metrics.jsonl, the progress bar, the caller's callbacks, and early stopping when configured."""
    callbacks = [
        MetricsLogger(run.metrics, counter),
        ProgressBar(counter),
        OverfitWatch(cfg.eval.overfit_patience, bool(cfg.train.early_stopping_patience)),
        *extra,
        *injected_faults(),
    ]
    if cfg.train.time_budget:
        callbacks.append(
            TimeBudget(
                cfg.train.time_budget,
                run.opened_at,
                cfg.train.warmup,
                say=say,
                write=lambda record: run.update_summary(time_budget=record),
            )
        )
    if governed(cfg.train.num_threads, world_size()):
        callbacks.append(ThreadGovernor(say, write=lambda record: run.update_summary(threads=record)))
    if cfg.train.early_stopping_patience:
        if not has_validation:
            raise TunesmithError(
                "train.early_stopping_patience needs a validation set; set data.validation_ratio or data.validation_file"
            )
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    return callbacks


def set_up_trainer(
    trainer_class: type[Trainer],
    cfg: Config,
    run: RunFolder,
    model,
    collator,
    train_rows: list[dict],
    validation_rows: list[dict],
    precision: str,
    extra_callbacks=(),
    resuming: bool = False,
    gradient_checkpointing: bool = False,
    layer_class: str | None = None,
    **trainer_kwargs,
) -> tuple[Trainer, TokenCounter]:
    """A `trainer_class` set up as every run's: our training arguments and callbacks (metrics.jsonl, progress,
    time budget, early stopping), trackers writing into the run folder, no KV cache, no printed dicts.

    layer_class: the block FSDP wraps; trainer_kwargs: the class's own (processing_class, a preference config...).
    """
    counter = TokenCounter(collator)
    has_validation = bool(validation_rows)
    callbacks = standard_callbacks(cfg, run, counter, extra_callbacks, has_validation)
    args = training_arguments(
        cfg, run, len(train_rows), has_validation, precision, resuming, layer_class, gradient_checkpointing
    )
    point_trackers_at(run, cfg)
    # A KV cache is useless in training and would disable packed attention masks.
    model.config.use_cache = False
    trainer = trainer_class(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_rows,
        eval_dataset=validation_rows or None,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    trainer.counter = counter
    quiet(trainer)
    return trainer, counter


def build_trainer(
    cfg: Config,
    run: RunFolder,
    model,
    tokenizer,
    train_rows: list[dict],
    validation_rows: list[dict],
    precision: str,
    extra_callbacks=(),
    resuming: bool = False,
    gradient_checkpointing: bool = False,
) -> tuple[Trainer, TokenCounter]:
    """The causal-LM Trainer: packed or padded batches, the LM head only at supervised positions, with the
    kernels train.kernels decides (recorded in run.json)."""
    pad_id = pad_token_id(tokenizer)
    kernels = choose_kernels(cfg, run, model, train_rows, precision)
    collator = (PackedCollator if cfg.data.packing else PadCollator)(pad_id)
    layer_class = type(transformer_blocks(model)[0]).__name__ if cfg.train.distributed == "fsdp" else None
    trainer, counter = set_up_trainer(
        CausalLMTrainer, cfg, run, model, collator, train_rows, validation_rows, precision, extra_callbacks,
        resuming, gradient_checkpointing, layer_class, processing_class=tokenizer,
    )  # fmt: skip
    trainer.sparse_lm_head = cfg.train.sparse_lm_head
    trainer.head_loss = kernels["head_loss"]
    trainer.lm_head = model.get_output_embeddings()
    trainer.pad_token_id = pad_id
    return trainer, counter


def choose_kernels(cfg: Config, run: RunFolder, model, train_rows: list[dict], precision: str) -> dict:
    """train.kernels decided (measured under auto), said, recorded in run.json, and Liger's layers applied."""
    sharded = world_size() > 1 and cfg.train.distributed != "ddp"
    decision = decide_kernels(
        cfg.train.kernels, model, precision, train_rows, per_device_batch(cfg.train.batch_size),
        cfg.train.sparse_lm_head, sharded, default_cache_dir(cfg.output.cache_dir), free_bytes(),
    )  # fmt: skip
    apply_liger(model, decision["liger"])
    say(describe(decision))
    run.update_summary(kernels=decision)
    return decision


def quiet(trainer: Trainer) -> None:
    """Our progress bar and metrics.jsonl replace the Trainer's printed dicts and its own bar."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def fit(trainer: Trainer, resume_from: str | None):
    """Train, stopping cleanly on SIGINT/SIGTERM (a checkpoint is saved first)."""
    stopper = GracefulStop()
    trainer.add_callback(stopper)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        stopper.install()
    try:
        output = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if in_main_thread:
            stopper.uninstall()
    state = trainer.state
    early_stopped = any(
        isinstance(c, EarlyStoppingCallback)
        and c.early_stopping_patience_counter >= c.early_stopping_patience
        for c in trainer.callback_handler.callbacks
    )
    interrupted = stopper.requested or (state.global_step < state.max_steps and not early_stopped)
    return output, interrupted


def stop_message(trainer: Trainer) -> str:
    """Why a run stopped early: a callback's own `stop_reason` (e.g. a sweep's pruning), else how to continue."""
    step = trainer.state.global_step
    reasons = [getattr(c, "stop_reason", None) for c in trainer.callback_handler.callbacks]
    reason = next((r for r in reasons if r), None)
    return (
        f"stopped at step {step}: {reason}" if reason else f"stopped at step {step}; continue with --resume"
    )
