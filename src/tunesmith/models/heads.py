"""A task head (classifier over a text, or over each token) sized for the run's labels."""

from __future__ import annotations

import torch

from tunesmith.models.anatomy import head_names


def fresh_head_unless_same_labels(model, model_path: str, labels: list[str]) -> str:
    """A checkpoint's head is kept only when it was trained for exactly these labels, in this order."""
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(model_path).id2label or {}
    if [saved.get(i) for i in range(len(saved))] == labels:
        return "kept (the checkpoint was trained on the same labels)"
    std = getattr(model.config, "initializer_range", 0.02)
    for name in head_names(model):
        for module in getattr(model, name).modules():  # same shape, other labels: start from scratch
            if isinstance(module, torch.nn.Linear):  # as transformers initializes a new head
                torch.nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return f"new ({', '.join(head_names(model))}), sized for {len(labels)} labels"


def label_arguments(labels: list[str]) -> dict:
    """from_pretrained arguments that size a new head for `labels` and make the saved model name them."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "ignore_mismatched_sizes": True,  # a pretrained head for other labels is replaced
    }
