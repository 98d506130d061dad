"""The encoder-decoder loop: the same Trainer set-up as causal LM; evaluation adds ROUGE/BLEU on generated targets.

transformers' Seq2SeqTrainer is not used: its only addition, predict_with_generate, gathers every prediction of
the whole split, while this evaluation scores loss batch by batch and generates for a bounded number of examples.
"""

from __future__ import annotations

import time

from transformers import Trainer

from tunesmith.config import Config
from tunesmith.data.seq2seq import Seq2SeqCollator
from tunesmith.evaluation.seq2seq import generate_targets, target_loss
from tunesmith.evaluation.text_metrics import generation_scores
from tunesmith.models.anatomy import transformer_blocks
from tunesmith.run_folder import RunFolder
from tunesmith.training.callbacks import TokenCounter
from tunesmith.training.loop import (
    AtomicCheckpoints,
    point_trackers_at,
    quiet,
    standard_callbacks,
    training_arguments,
)


class EncoderDecoderTrainer(AtomicCheckpoints, Trainer):
    """Validation loss per target token over the whole split, plus ROUGE/BLEU on the first `generations` rows."""

    pad_token_id = 0
    generations = 0
    references: list[str] = []  # the target texts of the first `generations` validation rows
    tokenizer = None
    stop_ids: list[int] = []
    max_new_tokens = 64

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        with self._excluded():
            started = time.perf_counter()
            rows = list(self.eval_dataset if eval_dataset is None else eval_dataset)
            batch = self.args.per_device_eval_batch_size
            scores = target_loss(self.model_wrapped, rows, self.pad_token_id, batch)
            metrics = {f"{metric_key_prefix}_loss": scores["loss"]}
            if self.generations and self.references:
                picked = [row["input_ids"] for row in rows[: self.generations]]
                outputs = generate_targets(
                    self.model, picked, self.tokenizer, self.stop_ids, self.max_new_tokens, batch
                )
                generated = generation_scores(self.references[: len(outputs)], outputs)
                for name in ("rouge1", "rouge2", "rougeL", "bleu"):
                    metrics[f"{metric_key_prefix}_{name}"] = generated[name]
            metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - started, 4)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics


def build_seq2seq_trainer(
    cfg: Config,
    run: RunFolder,
    model,
    encoder,
    train_rows: list[dict],
    validation_rows: list[dict],
    references: list[str],
    precision: str,
    extra_callbacks=(),
    resuming: bool = False,
    gradient_checkpointing: bool = False,
) -> tuple[EncoderDecoderTrainer, TokenCounter]:
    """`encoder`: the run's SourceEncoder; `references`: the validation rows' target texts, in row order."""
    tokenizer, pad_id = encoder.tokenizer, encoder.pad_token_id
    collator = Seq2SeqCollator(pad_id)
    counter = TokenCounter(collator)
    has_validation = bool(validation_rows)
    callbacks = standard_callbacks(cfg, run, counter, extra_callbacks, has_validation)
    layer_class = type(transformer_blocks(model)[0]).__name__ if cfg.train.distributed == "fsdp" else None
    args = training_arguments(
        cfg, run, len(train_rows), has_validation, precision, resuming, layer_class, gradient_checkpointing
    )
    point_trackers_at(run, cfg)
    model.config.use_cache = False  # a KV cache is useless in training; generation turns it on itself
    trainer = EncoderDecoderTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_rows,
        eval_dataset=validation_rows or None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.counter, trainer.pad_token_id = counter, pad_id
    trainer.generations, trainer.references = cfg.eval.train_generations, references
    trainer.tokenizer, trainer.stop_ids = tokenizer, encoder.stop_token_ids()
    trainer.max_new_tokens = cfg.eval.max_new_tokens
    quiet(trainer)
    return trainer, counter
