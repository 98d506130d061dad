"""Words to sub-tokens and back: each word's tag sits on its first sub-token (the rest are ignored, -100, unless
token_classification.label_all_subtokens), and a word's prediction is read from that same first sub-token."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tunesmith.errors import TunesmithError

IGNORE = -100


@dataclass
class Encoded:
    rows: list[dict]  # input_ids, attention_mask (token_type_ids), and labels for tagged examples
    word_ids: list[list[int | None]]  # each sub-token's word (None: special tokens)
    report: dict = field(default_factory=dict)


def max_tokens(cfg, tokenizer) -> int:
    """data.max_length, capped at what the model reads (its tokenizer's model_max_length): training and
    prediction cut sentences at the same place."""
    return min(cfg.data.max_length, getattr(tokenizer, "model_max_length", None) or cfg.data.max_length)


def inside(tag: str) -> str:
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def encode(tokenizer, examples: list, tag_ids: dict[str, int], max_length: int, label_all: bool) -> Encoded:
    """Tokenize pre-split words; words past max_length (cut) or without a sub-token are counted, never hidden."""
    if not getattr(tokenizer, "is_fast", False):
        raise TunesmithError(
            "token-classification needs a fast tokenizer (it maps sub-tokens back to words); this model's "
            "tokenizer has no fast version"
        )
    rows, word_ids = [], []
    unseen_words = cut_examples = 0
    for start in range(0, len(examples), 256):
        chunk = examples[start : start + 256]
        batch = tokenizer(
            [list(e.words) for e in chunk], is_split_into_words=True, truncation=True, max_length=max_length
        )
        for index, example in enumerate(chunk):
            ids = batch.word_ids(index)
            row = {name: batch[name][index] for name in batch.keys()}  # noqa: SIM118  (BatchEncoding)
            if example.tags:
                row["labels"] = labels_for(ids, example.tags, tag_ids, label_all)
            seen = len({w for w in ids if w is not None})
            if seen < len(example.words):
                unseen_words += len(example.words) - seen
                cut_examples += 1
            rows.append(row)
            word_ids.append(ids)
    report = {
        "max_length": max_length,
        "examples_cut": cut_examples,
        "words_unseen": unseen_words,
        "sub_token_labels": "every sub-token" if label_all else "first sub-token of each word",
    }
    return Encoded(rows, word_ids, report)


def labels_for(word_ids: list[int | None], tags, tag_ids: dict[str, int], label_all: bool) -> list[int]:
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(tag_ids[tags[word]])
        else:
            labels.append(tag_ids[inside(tags[word])] if label_all else IGNORE)
        previous = word
    return labels


def word_predictions(predicted_ids: list[list[int]], word_ids, words_per_example, names: list[str]):
    """Each word's tag from its first sub-token; a word the model never saw is O (counted in the data report)."""
    tags = []
    for ids, words, count in zip(predicted_ids, word_ids, words_per_example, strict=True):
        row = ["O"] * count
        previous = None
        for position, word in enumerate(words):
            if word is not None and word != previous and position < len(ids):
                row[word] = names[int(ids[position])]
            previous = word
        tags.append(row)
    return tags


class TaggingCollator:
    """Pads inputs with the tokenizer's pad id and labels with -100; counts real tokens for tokens/s."""

    unit = "tok"

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.real_tokens = 0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        batch = {}
        for name in rows[0]:
            fill = {"input_ids": self.pad_token_id, "labels": IGNORE}.get(name, 0)
            batch[name] = torch.tensor([r[name] + [fill] * (longest - len(r[name])) for r in rows])
        self.real_tokens += int(batch["attention_mask"].sum())
        return batch


def predict_ids(model, rows: list[dict], collator: TaggingCollator, batch_size: int) -> list[list[int]]:
    """The argmax tag id of every sub-token (per-batch argmax: the logits are never all kept)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predicted = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = collator([{k: v for k, v in r.items() if k != "labels"} for r in chunk])
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            ids = logits.argmax(-1).cpu().numpy()
            predicted += [list(ids[i, : len(r["input_ids"])]) for i, r in enumerate(chunk)]
    model.train(was_training)
    return predicted


def correct_sums(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Tagged sub-tokens whose argmax is right, and how many there are (the export's accuracy check)."""
    mask = labels != IGNORE
    return float((logits.argmax(-1) == labels)[mask].sum()), int(mask.sum())
