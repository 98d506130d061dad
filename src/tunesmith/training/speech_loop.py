"""The speech-recognition loop: the same Trainer set-up as the other tasks; evaluation adds WER/CER on a bounded
number of transcribed validation clips.

transformers' Seq2SeqTrainer is not used: its predict_with_generate gathers every prediction of the split, while
this evaluation scores the loss batch by batch and transcribes only the first eval.train_generations clips.
"""

from __future__ import annotations

import time

from transformers import Trainer

from tunesmith.config import Config
from tunesmith.data.speech import SpeechCollator
from tunesmith.evaluation.speech import error_rates, teacher_forced_loss, transcribe
from tunesmith.run_folder import RunFolder
from tunesmith.training.callbacks import TokenCounter
from tunesmith.training.loop import (
    AtomicCheckpoints,
    point_trackers_at,
    quiet,
    standard_callbacks,
    training_arguments,
)


class SpeechTrainer(AtomicCheckpoints, Trainer):
    """Validation loss per transcript token over the whole split, plus WER/CER on its first `generations` clips."""

    collator: SpeechCollator | None = None
    generations = 0
    tokenizer = None
    generate_options: dict = {}
    max_new_tokens = 128
    normalizer = "english"

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        with self._excluded():
            started = time.perf_counter()
            rows = list(self.eval_dataset if eval_dataset is None else eval_dataset)
            size = self.args.per_device_eval_batch_size
            batches = [self.collator(rows[i : i + size]) for i in range(0, len(rows), size)]
            metrics = {f"{metric_key_prefix}_loss": teacher_forced_loss(self.model, batches)["loss"]}
            if self.generations:
                picked = rows[: self.generations]
                hypotheses, references = [], []
                for start in range(0, len(picked), size):
                    chunk = picked[start : start + size]
                    features = self.collator.speech.features(
                        [self.collator.speech.load(r["path"]) for r in chunk]
                    )
                    hypotheses += transcribe(
                        self.model, features, self.tokenizer, self.max_new_tokens, self.generate_options
                    )
                    references += [
                        self.tokenizer.decode(r["labels"], skip_special_tokens=True) for r in chunk
                    ]
                scores = error_rates(references, hypotheses, self.normalizer)
                for name in ("wer", "cer"):
                    if scores[name] is not None:
                        metrics[f"{metric_key_prefix}_{name}"] = scores[name]
            metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - started, 4)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics


def build_speech_trainer(
    cfg: Config,
    run: RunFolder,
    model,
    tokenizer,
    collator: SpeechCollator,
    train_rows: list[dict],
    validation_rows: list[dict],
    generate_options: dict,
    precision: str,
    extra_callbacks=(),
    resuming: bool = False,
    gradient_checkpointing: bool = False,
) -> tuple[SpeechTrainer, TokenCounter]:
    counter = TokenCounter(collator)
    has_validation = bool(validation_rows)
    callbacks = standard_callbacks(cfg, run, counter, extra_callbacks, has_validation)
    args = training_arguments(
        cfg, run, len(train_rows), has_validation, precision, resuming, None, gradient_checkpointing
    )
    point_trackers_at(run, cfg)
    model.config.use_cache = False  # a KV cache is useless in training; generate() turns it on itself
    trainer = SpeechTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_rows,
        eval_dataset=validation_rows or None,
        callbacks=callbacks,
    )
    trainer.counter, trainer.collator, trainer.tokenizer = counter, collator, tokenizer
    trainer.generations = cfg.eval.train_generations
    trainer.generate_options, trainer.max_new_tokens = generate_options, cfg.speech.max_new_tokens
    trainer.normalizer = cfg.speech.normalizer
    quiet(trainer)
    return trainer, counter
