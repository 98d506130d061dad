"""A finished run as something to export: its merged fp32 model, processor, probe inputs and validation batches."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch

from tunesmith.data.collate import pad_token_id
from tunesmith.errors import TunesmithError
from tunesmith.training.run_folder import RunFolder

MAX_VALIDATION_EXAMPLES = 256  # enough to see what int8 costs, small enough to run in seconds


@dataclass
class Exportable:
    task: str
    model: torch.nn.Module  # adapters merged, fp32, eval mode, on the CPU
    processor: object  # tokenizer, image processor or feature extractor: saved next to every export
    input_names: list[str]
    probes: list[dict[str, torch.Tensor]]  # input sets of different shapes for parity; the last one is padded
    validation: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = field(default_factory=list)


class LogitsModule(torch.nn.Module):
    """Positional tensors in, logits out: the signature ONNX and TorchScript graphs need."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]):
        super().__init__()
        self.model, self.input_names = model, input_names
        self.extra = (
            {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
        )

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, tensors, strict=True)), **self.extra).logits


def _merged(model) -> torch.nn.Module:
    if hasattr(model, "merge_and_unload"):  # a peft model: fold the adapters into the weights
        model = model.merge_and_unload()
    return model.float().cpu().eval()


def load_exportable(run: RunFolder) -> Exportable:
    cfg = run.load_config()
    summary = run.finished_summary("export")
    if cfg.task == "causal-lm":
        return _causal_lm(run)
    if summary.get("method") == "features":
        raise TunesmithError(
            f"{run.path}: a features run has no tuned network to export; its classifier is model/features_head.json "
            "over the unchanged base model"
        )
    return _classifier(run)


def _causal_lm(run: RunFolder) -> Exportable:
    from tunesmith.data.collate import PadCollator
    from tunesmith.data.prepare import tokenize_data
    from tunesmith.models.loading import default_cache_dir
    from tunesmith.tasks import causal_lm

    model, renderer, cfg = causal_lm.load_run_model(run)
    tokenizer = renderer.tokenizer
    probes = []
    for prompts in (
        [(("user", "Write a headline about the weather."),)],
        [(("user", "Hi"),), (("user", "Sum up: rain, then sun."),)],
    ):
        ids = [renderer.encode_prompt(p) for p in prompts]
        width = max(map(len, ids))
        pad = pad_token_id(tokenizer)
        probes.append(
            {
                "input_ids": torch.tensor([[pad] * (width - len(i)) + i for i in ids]),
                "attention_mask": torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids]),
            }
        )
    checked = causal_lm.validated_data(cfg)
    rows = tokenize_data(checked, cfg.data, renderer, default_cache_dir(cfg.output.cache_dir))["validation"]
    collate = PadCollator(pad)
    validation = []
    for start in range(0, min(len(rows), MAX_VALIDATION_EXAMPLES), 8):
        batch = collate(rows[start : start + 8])
        validation.append(({k: batch[k] for k in ("input_ids", "attention_mask")}, batch["labels"]))
    return Exportable(
        "causal-lm", _merged(model), tokenizer, ["input_ids", "attention_mask"], probes, validation
    )


def _classifier(run: RunFolder) -> Exportable:
    from tunesmith.data.labelled import check_labelled
    from tunesmith.tasks.classification_predict import RunClassifier

    classifier = RunClassifier(run)
    cfg, modality = classifier.cfg, classifier.modality
    model = _merged(classifier.model)
    checked = check_labelled(cfg.data.model_copy(update={"on_error": "skip"}), cfg.task)
    label_ids = {label: i for i, label in enumerate(classifier.labels)}
    examples = (checked.validation or checked.train)[:MAX_VALIDATION_EXAMPLES]
    prepared = modality.prepare(examples, label_ids, cfg.data.multi_label, training=False)
    collate = modality.collator(model)
    batches = [
        collate([prepared.dataset[i] for i in range(s, min(s + 16, len(examples)))])
        for s in range(0, len(examples), 16)
    ]
    names = [name for name in batches[0] if name != "labels"]
    alone = collate(
        [prepared.dataset[0]]
    )  # one example at its own length: another sequence length than the batch
    probes = [{k: alone[k] for k in names}, {k: batches[0][k][:3] for k in names}]
    validation = [({k: b[k] for k in names}, b["labels"]) for b in batches]
    return Exportable(cfg.task, model, modality.processor, names, probes, validation)


def metric_sums(task: str, logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(sum, count) of the validation metric: summed token loss for causal LM, correct predictions otherwise."""
    if task == "causal-lm":
        targets = labels[:, 1:]
        scores = logits[:, :-1].astype(np.float64)
        scores -= scores.max(axis=-1, keepdims=True)
        log_probs = scores - np.log(np.exp(scores).sum(axis=-1, keepdims=True))
        keep = targets != -100
        picked = np.take_along_axis(log_probs, np.where(keep, targets, 0)[..., None], axis=-1)[..., 0]
        return float(-(picked * keep).sum()), int(keep.sum())  # mean: validation loss per supervised token
    if labels.ndim == 2:  # multi-label: exact-match of the thresholded label set
        return float(((logits > 0) == (labels > 0.5)).all(axis=1).sum()), len(labels)
    return float((logits.argmax(axis=-1) == labels).sum()), len(labels)
