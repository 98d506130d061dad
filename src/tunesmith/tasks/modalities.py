"""What differs between text, image and audio classification: the Auto class, the processor, and batching.

Shared with token classification's forgetting probe (a linear probe on a labelled reference set of texts), so it
lives beside the task packages, not in one; what it reads of the classification section is InputSettings."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from tunesmith.config import DataConfig, ModelConfig
from tunesmith.data.labelled import LabelledExample
from tunesmith.data.media import augment_image, load_audio, load_image
from tunesmith.errors import TunesmithError
from tunesmith.models.anatomy import forward_inputs


class InputSettings(Protocol):
    """What the modalities read of the `classification:` section (tasks/classification/settings.py)."""

    text_pair_field: str | None
    max_windows: int
    augment: bool
    clip_seconds: float


def label_target(example: LabelledExample, label_ids: dict[str, int], multi_label: bool):
    if multi_label:
        target = [0.0] * len(label_ids)
        for label in example.labels:
            target[label_ids[label]] = 1.0
        return target
    return label_ids[example.labels[0]]


def labels_of(example: LabelledExample, label_ids: dict[str, int], multi_label: bool) -> dict:
    """{"labels": target}, or {} for an unlabelled example (prediction input)."""
    return {"labels": label_target(example, label_ids, multi_label)} if example.labels else {}


class ExampleDataset(torch.utils.data.Dataset):
    """Decodes files lazily (one batch at a time); augmentation draws from a seeded generator."""

    def __init__(self, items: list[dict], load):
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.load(self.items[index])


@dataclass
class Prepared:
    dataset: torch.utils.data.Dataset | list
    targets: list  # each kept row's label id (or multi-hot row), in dataset order
    report: dict = field(default_factory=dict)
    groups: list[int] | None = None  # data.on_overflow windows: the text each row (a window) was cut from

    @property
    def text_targets(self) -> list:
        """One target per text (a text's windows share its label)."""
        if self.groups is None:
            return self.targets
        first: dict[int, int] = {}
        for row, text in enumerate(self.groups):
            first.setdefault(text, row)
        return [self.targets[first[text]] for text in sorted(first)]

    def per_text(self, values: np.ndarray) -> np.ndarray:
        """Rows of `values` (one per window) averaged into one row per text; unchanged without windows."""
        if self.groups is None:
            return values
        groups = np.asarray(self.groups)
        sums = np.zeros((groups.max() + 1, values.shape[1]), dtype=np.float64)
        np.add.at(sums, groups, values)
        return sums / np.bincount(groups)[:, None]

    def text_scores(self, logits: np.ndarray, multi_label: bool) -> np.ndarray:
        """One row of scores per text: a text's windows' log-probabilities averaged (plain logits without windows)."""
        return logits if self.groups is None else self.per_text(window_scores(logits, multi_label))


def window_scores(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """Scores a text's windows are averaged in: log-probabilities (so a text's softmax is the normalized
    geometric mean of its windows' probabilities), or the logits themselves for multi-label."""
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return logits
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def head_and_tail(ids: list[int], max_length: int) -> list[int]:
    """The first 3/4 and the last 1/4 of the allowed tokens (Sun et al. 2019: the end of a long text carries
    information the opening lacks); the leading [CLS] and the closing [SEP] are kept by construction."""
    tail = max_length // 4
    return ids[: max_length - tail] + ids[len(ids) - tail :]


class TextModality:
    name = "text"
    auto_class = "AutoModelForSequenceClassification"
    unit = "tok"

    def __init__(
        self,
        model_path: str,
        model_cfg: ModelConfig,
        data_cfg: DataConfig,
        settings: InputSettings | None = None,
    ):
        """settings None: single texts, no windows (token classification's probe reads its reference so)."""
        from tunesmith.models.loading import load_tokenizer

        self.processor = load_tokenizer(model_path, model_cfg)
        self.data_cfg = data_cfg
        self.text_pair_field = settings.text_pair_field if settings else None
        self.max_windows = settings.max_windows if settings else None
        limit = getattr(self.processor, "model_max_length", None) or data_cfg.max_length
        self.max_length = min(data_cfg.max_length, limit if limit < 1_000_000 else data_cfg.max_length)
        if self.processor.pad_token_id is None:
            self.processor.pad_token = self.processor.eos_token or self.processor.unk_token

    def prepare(self, examples, label_ids, multi_label: bool, training: bool) -> Prepared:
        """Tokenize once; over-long examples are counted and truncated or dropped (data.on_overflow)."""
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples] if self.text_pair_field else None
        full = self.processor(texts, pairs, truncation=False, verbose=False)["input_ids"]
        long_rows = {i for i, ids in enumerate(full) if len(ids) > self.max_length}
        lengths = sorted(len(ids) for ids in full)
        report = {
            "max_length": self.max_length,
            "over_max_length": len(long_rows),
            "action": {
                "drop": "dropped",
                "head_tail": "cut to their head and tail",
                "windows": "split into windows",
            }.get(self.data_cfg.on_overflow, "truncated"),
            "median_tokens": lengths[len(lengths) // 2] if lengths else 0,
            "max_tokens": lengths[-1] if lengths else 0,
        }
        if self.data_cfg.on_overflow == "windows":
            return self.windows(examples, label_ids, multi_label, training, report)
        cut = self.processor(texts, pairs, truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in cut]
        rows = []
        for i, example in enumerate(examples):
            if i in long_rows and self.data_cfg.on_overflow == "drop":
                continue
            row = {k: cut[k][i] for k in keys}
            if i in long_rows and self.data_cfg.on_overflow == "head_tail":
                row = {
                    k: head_and_tail(full[i] if k == "input_ids" else [0] * len(full[i]), self.max_length)
                    for k in keys
                }
            rows.append(row | labels_of(example, label_ids, multi_label))
        return Prepared(rows, [row["labels"] for row in rows if "labels" in row], report)

    def windows(self, examples, label_ids, multi_label: bool, training: bool, report: dict) -> Prepared:
        """Every text cut into consecutive max_length windows, each with the model's special tokens (the
        tokenizer's own overflow handling); training keeps the first classification.max_windows of each text, evaluation
        and prediction read them all and average (Prepared.per_text)."""
        encoded = self.processor(
            [e.text for e in examples],
            truncation=True,
            max_length=self.max_length,
            return_overflowing_tokens=True,
            verbose=False,
        )
        if "overflow_to_sample_mapping" not in encoded:
            raise TunesmithError(
                "data.on_overflow: windows needs a fast tokenizer (a tokenizer.json next to the model); "
                "use truncate or head_tail"
            )
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        rows, groups, seen = [], [], Counter()
        for window, text in enumerate(encoded["overflow_to_sample_mapping"]):
            seen[text] += 1
            if training and seen[text] > self.max_windows:
                continue
            rows.append(
                {k: encoded[k][window] for k in keys} | labels_of(examples[text], label_ids, multi_label)
            )
            groups.append(text)
        report |= {
            "windows": len(rows),
            "windows_per_text_max": max(seen.values(), default=0),
        }
        if training:
            report |= {
                "max_windows": self.max_windows,
                "texts_over_max_windows": sum(count > self.max_windows for count in seen.values()),
            }
        return Prepared(rows, [row["labels"] for row in rows if "labels" in row], report, groups)

    def collator(self, model) -> TextCollator:
        return TextCollator(self.processor.pad_token_id)

    def save(self, folder) -> None:
        self.processor.save_pretrained(folder)


class TextCollator:
    unit = "tok"

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.real_tokens = 0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        token_types = (
            torch.zeros((len(rows), width), dtype=torch.long) if "token_type_ids" in rows[0] else None
        )
        for i, row in enumerate(rows):
            length = len(row["input_ids"])
            input_ids[i, :length] = torch.tensor(row["input_ids"])
            attention_mask[i, :length] = 1
            if token_types is not None:
                token_types[i, :length] = torch.tensor(row["token_type_ids"])
        self.real_tokens += int(attention_mask.sum())
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_types is not None:
            batch["token_type_ids"] = token_types
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([row["labels"] for row in rows])
        return batch


class MediaCollator:
    """Runs the model's image or audio processor on a batch of decoded files."""

    unit = "ex"

    def __init__(self, process, accepted: set[str]):
        self.process, self.accepted = process, accepted
        self.real_tokens = 0  # examples, for images and audio

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {k: v for k, v in self.process([row["input"] for row in rows]).items() if k in self.accepted}
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([row["labels"] for row in rows])
        self.real_tokens += len(rows)
        return batch


class MediaModality:
    """Images and audio: files decoded one batch at a time, then the model's own processor."""

    unit = "ex"
    processor_class = ""  # the transformers Auto class that loads the processor
    processor_hint = ""  # how to save one, for the error message

    def __init__(
        self, model_path: str, model_cfg: ModelConfig, data_cfg: DataConfig, settings: InputSettings
    ):
        import transformers

        try:
            loader = getattr(transformers, self.processor_class)
            self.processor = loader.from_pretrained(model_path, revision=model_cfg.revision)
        except (OSError, ValueError) as exc:
            raise TunesmithError(
                f"model.name: {model_path} has no {self.processor_hint[0]} ({exc.__class__.__name__}); save one next "
                f"to the weights (e.g. {self.processor_hint[1]}.save_pretrained(folder))"
            ) from None
        self.data_cfg, self.settings = data_cfg, settings

    def decode(self, path: str, rng: random.Random, training: bool):
        raise NotImplementedError

    def report(self, training: bool) -> dict:
        raise NotImplementedError

    def prepare(self, examples, label_ids, multi_label: bool, training: bool) -> Prepared:
        rng = random.Random(self.data_cfg.seed)

        def load(item: dict) -> dict:
            labels = {"labels": item["labels"]} if "labels" in item else {}
            return {"input": self.decode(item["path"], rng, training)} | labels

        items = [{"path": e.path} | labels_of(e, label_ids, multi_label) for e in examples]
        targets = [item["labels"] for item in items if "labels" in item]
        return Prepared(ExampleDataset(items, load), targets, self.report(training))

    def save(self, folder) -> None:
        self.processor.save_pretrained(folder)


class ImageModality(MediaModality):
    name = "image"
    auto_class = "AutoModelForImageClassification"
    processor_class = "AutoImageProcessor"
    processor_hint = ("image processor", "ViTImageProcessor(size=...)")

    def __init__(
        self, model_path: str, model_cfg: ModelConfig, data_cfg: DataConfig, settings: InputSettings
    ):
        from transformers import AutoConfig

        super().__init__(model_path, model_cfg, data_cfg, settings)
        self.channels = getattr(AutoConfig.from_pretrained(model_path), "num_channels", 3)

    def decode(self, path: str, rng: random.Random, training: bool):
        image = load_image(path, self.channels)
        return augment_image(image, rng) if training and self.settings.augment else image

    def report(self, training: bool) -> dict:
        return {"augmentation": training and self.settings.augment}

    def collator(self, model) -> MediaCollator:
        return MediaCollator(
            lambda images: self.processor(images=images, return_tensors="pt"), forward_inputs(model)
        )


class AudioModality(MediaModality):
    name = "audio"
    auto_class = "AutoModelForAudioClassification"
    processor_class = "AutoFeatureExtractor"
    processor_hint = ("feature extractor", "Wav2Vec2FeatureExtractor()")

    def decode(self, path: str, rng: random.Random, training: bool):
        # a random window of a longer clip in training, its start otherwise
        return load_audio(
            path, self.processor.sampling_rate, self.settings.clip_seconds, rng if training else None
        )

    def report(self, training: bool) -> dict:
        return {"sampling_rate": self.processor.sampling_rate, "clip_seconds": self.settings.clip_seconds}

    def collator(self, model) -> MediaCollator:
        def process(clips):
            return self.processor(clips, sampling_rate=self.processor.sampling_rate, return_tensors="pt")

        return MediaCollator(process, forward_inputs(model))
