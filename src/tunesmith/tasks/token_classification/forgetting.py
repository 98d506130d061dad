"""The forgetting check of a tagger's encoder: how well a linear probe on its pooled features solves a reference
labelled text set (eval.reference: text + label rows), before and after fine-tuning (the check classification
runs too)."""

from __future__ import annotations

from tunesmith.config import Config
from tunesmith.evaluation.forgetting import ProbeReference, drift
from tunesmith.evaluation.forgetting import describe as describe_drift
from tunesmith.tasks.modalities import TextModality


class ReferenceProbe:
    def __init__(self, cfg: Config, model_path: str):
        self.cfg = cfg
        self.modality = TextModality(model_path, cfg.model, cfg.data)
        self.reference = ProbeReference.load(cfg, self.modality)

    def score(self, model) -> dict:
        collator = self.modality.collator(model)
        return self.reference.score(model, collator, self.cfg.eval.batch_size, True, self.cfg.train.seed)

    def describe(self, score: dict) -> str:
        return f"reference probe accuracy {score['accuracy']:.4f}"

    def drift(self, before: dict, after: dict, cfg: Config) -> dict:
        change = drift(before, after, cfg.eval.forgetting_threshold, "accuracy")
        return change | {"reference": self.reference.path}

    def describe_drift(self, change: dict) -> str:
        return describe_drift(change, self.reference.path)
