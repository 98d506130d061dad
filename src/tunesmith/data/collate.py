"""Batching: dynamic padding, and packing with no attention or loss across example boundaries."""

from __future__ import annotations

import torch

IGNORE = -100


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, or its EOS where it has none (pads are masked
    by position, so an EOS used as padding never hides the real one)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class PadCollator:
    """Pad each batch to its own longest example (never to max_length); pads are masked by position, not by id.

    Masking by position matters when pad_token == eos_token: the real EOS stays in the labels.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.real_tokens = 0  # non-padding tokens handed to the model so far (for tokens/s)

    def _width(self, features: list[dict]) -> int:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return width

    def _fill(self, features: list[dict]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """input_ids padded with pad_token_id and labels padded with IGNORE, plus each row's real length."""
        width, batch = self._width(features), len(features)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE, dtype=torch.long)
        lengths = []
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.tensor(feature["input_ids"])
            labels[row, :length] = torch.tensor(feature["labels"])
            lengths.append(length)
        self.real_tokens += sum(lengths)
        return {"input_ids": input_ids, "labels": labels}, lengths

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch, lengths = self._fill(features)
        positions = torch.arange(batch["input_ids"].shape[1])
        batch["attention_mask"] = (positions < torch.tensor(lengths)[:, None]).long()
        return batch


class PackedCollator(PadCollator):
    """Batch packed rows. Position ids restart at each example; with no attention_mask, transformers
    builds a block-diagonal causal mask from them, so examples never attend to each other."""

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch, lengths = self._fill(features)
        width = batch["input_ids"].shape[1]
        # Padding is its own "sequence" (positions from 0), so no real token attends to it.
        position_ids = torch.arange(width).repeat(len(features), 1)
        for row, (feature, length) in enumerate(zip(features, lengths, strict=True)):
            if "position_ids" in feature:  # evaluation rows are not packed: they keep plain positions
                position_ids[row, :length] = torch.tensor(feature["position_ids"])
            position_ids[row, length:] = torch.arange(width - length)
        batch["position_ids"] = position_ids
        return batch


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """Greedy first-fit-decreasing packing of tokenized examples into rows of at most max_length tokens.

    The first label of every example is masked: in a packed row it would be predicted from the previous
    example's last token (unpacked, the shift drops it anyway), so the loss never crosses a boundary.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        length = len(examples[index]["input_ids"])
        slot = next((r for r, free in enumerate(room) if free >= length), None)
        if slot is None:
            rows.append([])
            room.append(max_length)
            slot = len(rows) - 1
        rows[slot].append(index)
        room[slot] -= length
    packed = []
    for members in rows:
        input_ids, labels, position_ids = [], [], []
        for index in members:
            example = examples[index]
            input_ids += example["input_ids"]
            labels += [IGNORE, *example["labels"][1:]]
            position_ids += list(range(len(example["input_ids"])))
        packed.append({"input_ids": input_ids, "labels": labels, "position_ids": position_ids})
    return packed
