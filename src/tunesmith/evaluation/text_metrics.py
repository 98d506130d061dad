"""Scores of generated text against references: ROUGE-1/2/L (rouge-score), BLEU (sacrebleu), exact match."""

from __future__ import annotations

import re


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used for exact match."""
    return re.sub(r"\s+", " ", text).strip().lower()


def generation_scores(references: list[str], outputs: list[str]) -> dict:
    """Corpus-level scores in percent (0-100), like the papers and leaderboards report them."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if not references:
        return {"examples": 0}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for reference, output in zip(references, outputs, strict=True):
        for name, score in scorer.score(reference, output).items():
            sums[name] += score.fmeasure
    exact = sum(normalize(r) == normalize(o) for r, o in zip(references, outputs, strict=True))
    return {
        "examples": len(references),
        **{name: round(100 * value / len(references), 2) for name, value in sums.items()},
        "bleu": round(sacrebleu.corpus_bleu(outputs, [references]).score, 2),
        "exact_match": round(100 * exact / len(references), 2),
    }
