"""The speech-recognition loop: the same Trainer set-up as the other tasks; evaluation adds WER/CER on a bounded
number of transcribed validation clips.

transformers' Seq2SeqTrainer is not used: its predict_with_generate gathers every prediction of the split, while
this evaluation scores the loss batch by batch and transcribes only the first eval.train_generations clips.
"""

from __future__ import annotations

from transformers import Trainer

from tunesmith.tasks.speech_recognition.metrics import error_rates, teacher_forced_loss, transcribe
from tunesmith.tasks.speech_recognition.settings import SpeechConfig
from tunesmith.training.loop import OwnEvaluation


class SpeechTrainer(OwnEvaluation, Trainer):
    """Validation loss per transcript token over the whole split, plus WER/CER on its first `generations` clips
    (transcribed with generate()'s `options`, scored on texts normalized as speech.normalizer says)."""

    def __init__(self, *args, tokenizer, generations: int, options: dict, settings: SpeechConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer, self.generations, self.options = tokenizer, generations, options
        self.max_new_tokens, self.normalizer = settings.max_new_tokens, settings.normalizer

    def scores(self, rows: list[dict], batch_size: int) -> dict:
        collator, speech = self.data_collator, self.data_collator.speech
        batches = [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
        scores = {"loss": teacher_forced_loss(self.model, batches)["loss"]}
        if self.generations:
            picked = rows[: self.generations]
            hypotheses, references = [], []
            for start in range(0, len(picked), batch_size):
                chunk = picked[start : start + batch_size]
                features = speech.features([speech.load(r["path"]) for r in chunk])
                hypotheses += transcribe(
                    self.model, features, self.tokenizer, self.max_new_tokens, self.options
                )
                references += [self.tokenizer.decode(r["labels"], skip_special_tokens=True) for r in chunk]
            rates = error_rates(references, hypotheses, self.normalizer)
            scores |= {name: rates[name] for name in ("wer", "cer") if rates[name] is not None}
        return scores
