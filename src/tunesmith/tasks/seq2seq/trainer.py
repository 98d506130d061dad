"""The encoder-decoder loop: the same Trainer set-up as causal LM; evaluation adds ROUGE/BLEU on generated targets.

transformers' Seq2SeqTrainer is not used: its only addition, predict_with_generate, gathers every prediction of
the whole split, while this evaluation scores loss batch by batch and generates for a bounded number of examples.
"""

from __future__ import annotations

from transformers import Trainer

from tunesmith.evaluation.text_metrics import generation_scores
from tunesmith.tasks.seq2seq.metrics import generate_targets, target_loss
from tunesmith.training.loop import OwnEvaluation


class EncoderDecoderTrainer(OwnEvaluation, Trainer):
    """Validation loss per target token over the whole split, plus ROUGE/BLEU on the first `generations` rows.

    encoder: the run's SourceEncoder; references: the validation rows' target texts, in row order."""

    def __init__(
        self, *args, encoder, references: list[str], generations: int, max_new_tokens: int, **kwargs
    ):
        super().__init__(*args, processing_class=encoder.tokenizer, **kwargs)
        self.encoder, self.references = encoder, references
        self.generations, self.max_new_tokens = generations, max_new_tokens

    def scores(self, rows: list[dict], batch_size: int) -> dict:
        encoder = self.encoder
        scores = {"loss": target_loss(self.model_wrapped, rows, encoder.pad_token_id, batch_size)["loss"]}
        if self.generations and self.references:
            picked = [row["input_ids"] for row in rows[: self.generations]]
            outputs = generate_targets(
                self.model,
                picked,
                encoder.tokenizer,
                encoder.stop_token_ids(),
                self.max_new_tokens,
                batch_size,
            )
            generated = generation_scores(self.references[: len(outputs)], outputs)
            scores |= {name: generated[name] for name in ("rouge1", "rouge2", "rougeL", "bleu")}
        return scores
