"""Labelling new data with a finished classification run (`tunesmith predict`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import TunesmithError
from tunesmith.evaluation.classification import predicted, probabilities
from tunesmith.methods.features import FeatureHead, embed
from tunesmith.models.loading import default_cache_dir, load_model, resolve_model
from tunesmith.tasks.classification import classifier_arguments
from tunesmith.tasks.modalities import MODALITIES
from tunesmith.training.run_folder import RunFolder, free_path


class RunClassifier:
    """A finished run's classifier: the network (full weights, or base + adapter) or base + feature head."""

    def __init__(self, run: RunFolder):
        cfg = run.load_config()
        summary = run.read_summary()
        if summary.get("status") != "finished" or not run.model_dir.exists():
            raise TunesmithError(
                f"{run.path}: no trained model yet (status: {summary.get('status', 'unknown')}); finish training or --resume it"
            )
        self.cfg, self.labels = cfg, summary["labels"]
        self.multi_label = summary.get("multi_label", False)
        base_path = summary.get("base_model_path")
        if not base_path or not Path(base_path).exists():
            base_path = resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))
        self.head = None
        if summary["method"] == "features":
            self.head, _ = FeatureHead.load(run.model_dir)
            weights = base_path
        elif summary.get("is_adapter"):
            weights = base_path
        else:
            weights = str(run.model_dir)
        self.modality = MODALITIES[cfg.task](str(run.model_dir), cfg.model, cfg.data)
        auto_class = self.modality.auto_class
        self.model = load_model(
            weights, cfg.model, None, auto_class, **classifier_arguments(cfg, self.labels)
        )
        if summary.get("is_adapter"):
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(run.model_dir))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()

    def logits(self, examples: list, batch_size: int, progress: bool = True) -> np.ndarray:
        from tqdm.auto import tqdm

        prepared = self.modality.prepare(examples, {}, self.multi_label, training=False)
        collator = self.modality.collator(self.model)
        if self.head is not None:
            features = embed(self.model, prepared.dataset, collator, batch_size, self.modality.name == "text")
            return self.head.logits(prepared.per_text(features))
        chunks = []
        dataset = prepared.dataset
        with torch.no_grad():
            for start in tqdm(
                range(0, len(dataset), batch_size), desc="predict", unit="batch", disable=not progress
            ):
                batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
                inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
                chunks.append(self.model(**inputs).logits.float().cpu().numpy())
        if not chunks:
            return np.zeros((0, len(self.labels)))
        # one row per input: with data.on_overflow windows, the mean of its windows' log-probabilities
        return prepared.text_scores(np.concatenate(chunks), self.multi_label)


def predict(
    run_dir: str | Path, source: str | Path, output: str | Path | None = None, batch_size: int = 32
) -> dict:
    """Label every row of a table (or every file in a folder); write label and probabilities as JSONL or CSV."""
    from tunesmith.data.labelled import MODALITY, read_inputs

    run = RunFolder.open(run_dir)
    classifier = RunClassifier(run)
    cfg = classifier.cfg
    examples, problems = read_inputs(str(source), cfg.data, MODALITY[cfg.task])
    if problems:
        raise TunesmithError(
            f"{len(problems)} unreadable input(s); nothing was predicted", [f"  {p}" for p in problems[:50]]
        )
    if cfg.task == "text-classification" and cfg.data.on_overflow == "drop":
        cfg.data.on_overflow = "truncate"  # every input gets an answer; over-long ones are counted below
    target = Path(output) if output else free_path(run.path / "predictions" / f"{Path(source).stem}.jsonl")
    if target.exists():
        raise TunesmithError(f"{target} already exists; choose another --output")
    if target.suffix.lower() not in {".jsonl", ".csv"}:
        raise TunesmithError(f"--output {target}: use a .jsonl or .csv file name")
    probs = probabilities(classifier.logits(examples, batch_size), classifier.multi_label)
    chosen = predicted(probs, classifier.multi_label)
    records = []
    for example, row, pick in zip(examples, probs, chosen, strict=True):
        names = classifier.labels
        label = [names[i] for i, on in enumerate(pick) if on] if classifier.multi_label else names[int(pick)]
        records.append(
            {
                "input": example.where,
                "label": label,
                "probabilities": {name: round(float(p), 6) for name, p in zip(names, row, strict=True)},
            }
        )
    _write_predictions(target, records, classifier.labels)
    return {"output": str(target), "rows": len(records)}


def _write_predictions(target: Path, records: list[dict], labels: list[str]) -> None:
    import csv

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        if target.suffix.lower() == ".csv":
            writer = csv.writer(handle)
            writer.writerow(["input", "label", *[f"p_{name}" for name in labels]])
            for record in records:
                label = record["label"]
                writer.writerow(
                    [
                        record["input"],
                        "|".join(label) if isinstance(label, list) else label,
                        *record["probabilities"].values(),
                    ]
                )
        else:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    temporary.replace(target)
