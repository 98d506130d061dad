"""Classification's trainer: transformers' Trainer as every task sets it up, plus class weighting, layer-wise LR
decay, and metrics per text (a text's windows averaged)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Trainer

from tunesmith.config import Config
from tunesmith.models.anatomy import transformer_blocks
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.classification.metrics import predicted, probabilities, summary_metrics
from tunesmith.training.callbacks import TokenCounter
from tunesmith.training.loop import AtomicCheckpoints, set_up_trainer


def class_weights(targets: list, num_labels: int, multi_label: bool) -> torch.Tensor:
    """Inverse frequency (n / (classes * count)); for multi-label, negatives / positives per label."""
    if multi_label:
        matrix = np.asarray(targets, dtype=np.float64)
        positives = matrix.sum(axis=0).clip(min=1)
        return torch.tensor((len(matrix) - positives) / positives, dtype=torch.float32)
    counts = np.bincount(np.asarray(targets), minlength=num_labels).clip(min=1)
    return torch.tensor(len(targets) / (num_labels * counts), dtype=torch.float32)


def layerwise_groups(
    model, learning_rate: float, decay: float, weight_decay: float, no_decay: set[str]
) -> list:
    """Parameter groups whose LR shrinks by `decay` per block going down; embeddings get the lowest rate."""
    blocks = list(transformer_blocks(model))
    depth_of = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    groups: dict[tuple[float, float], list] = {}
    seen_block = False
    for name, parameter in model.named_parameters():
        depth = depth_of.get(id(parameter))
        seen_block = seen_block or depth is not None
        if not parameter.requires_grad:
            continue
        if depth is not None:
            scale = decay ** (len(blocks) - depth)
        else:
            scale = 1.0 if seen_block else decay ** (len(blocks) + 1)  # head and final norm, or embeddings
        key = (learning_rate * scale, 0.0 if name in no_decay else weight_decay)
        groups.setdefault(key, []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]


class ClassificationTrainer(AtomicCheckpoints, Trainer):
    loss_weights: torch.Tensor | None = None
    multi_label = False
    layer_lr_decay: float | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_weights is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weights = self.loss_weights.to(outputs.logits.device)
        # Summed, then divided by the whole accumulated batch's count (num_items_in_batch, as the Trainer
        # expects from a model that takes it): batch 2 x accumulation 2 then steps exactly as batch 4. A
        # per-micro-batch weighted mean would be summed over the micro-batches, scaling the step by their
        # number, and its divisor (the batch's weight sum) cannot be added up across them.
        if self.multi_label:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                outputs.logits.float(), labels.float(), pos_weight=weights, reduction="sum"
            )
        else:
            loss = torch.nn.functional.cross_entropy(
                outputs.logits.float(), labels, weight=weights, reduction="sum"
            )
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else labels.numel())
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages over ranks; the count covers them all
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        if not self.layer_lr_decay or self.optimizer is not None:
            return super().create_optimizer(model)
        model = model or self.model
        optimizer_class, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        kwargs.pop("lr", None)
        no_decay = set(self.get_decay_parameter_names(model))
        no_decay = {name for name, _ in model.named_parameters() if name not in no_decay}
        groups = layerwise_groups(
            model, self.args.learning_rate, self.layer_lr_decay, self.args.weight_decay, no_decay
        )
        self.optimizer = optimizer_class(groups, lr=self.args.learning_rate, **kwargs)
        return self.optimizer


def metrics_function(multi_label: bool, validation=None):
    """Metrics per text: with data.on_overflow windows, a text's windows are averaged first."""

    def compute(evaluation) -> dict[str, float]:
        logits = (
            evaluation.predictions[0] if isinstance(evaluation.predictions, tuple) else evaluation.predictions
        )
        labels = evaluation.label_ids
        if validation is not None and validation.groups is not None:
            logits = validation.text_scores(logits, multi_label)
            labels = np.asarray(validation.text_targets)
        return summary_metrics(labels, predicted(probabilities(logits, multi_label), multi_label))

    return compute


def build_classification_trainer(
    cfg: Config,
    run: RunFolder,
    model,
    train_set,
    validation,
    collator,
    targets: list,
    num_labels: int,
    precision: str,
    multi_label: bool,
    extra_callbacks=(),
    resuming: bool = False,
    gradient_checkpointing: bool = False,
) -> tuple[ClassificationTrainer, TokenCounter]:
    """`validation`: a tasks.modalities.Prepared (its rows, and which text each row belongs to)."""
    layer_class = type(transformer_blocks(model)[0]).__name__ if cfg.train.distributed == "fsdp" else None
    trainer, counter = set_up_trainer(
        ClassificationTrainer, cfg, run, model, collator, train_set, validation.dataset, precision,
        extra_callbacks, resuming, gradient_checkpointing, layer_class,
        compute_metrics=metrics_function(multi_label, validation),
    )  # fmt: skip
    # the logits are (examples x classes): small, and the metrics need them
    trainer.args.prediction_loss_only = False
    trainer.multi_label = multi_label
    trainer.layer_lr_decay = cfg.train.layer_lr_decay
    if cfg.train.class_weights:
        trainer.loss_weights = class_weights(targets, num_labels, multi_label)
    return trainer, counter
