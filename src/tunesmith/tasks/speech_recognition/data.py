"""Speech-recognition data: tables of audio path + transcript, or a folder of audio files each beside a
same-named .txt transcript; every row checked, and each clip's length and sample rate read without decoding it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunesmith.config import Config, DataConfig
from tunesmith.data.collate import IGNORE
from tunesmith.data.media import AUDIO_SUFFIXES, audio_problem, read_audio
from tunesmith.data.prepare import CheckedData, rows_report, three_splits
from tunesmith.data.readers import Row, read_rows
from tunesmith.errors import TunesmithError
from tunesmith.tasks.speech_recognition.settings import SECTION, SpeechConfig


@dataclass(frozen=True)
class TranscribedExample:
    where: str  # file:line of the table row, or the audio file's path
    path: str  # the audio file
    text: str | None  # the transcript (None: an input to transcribe)
    seconds: float = 0.0
    sample_rate: int = 0

    @property
    def key(self) -> tuple:
        return (self.path, self.text)


def _clip(where: str, path: Path, text: str | None) -> TranscribedExample | str:
    """The example, or what is wrong with its audio."""
    import soundfile

    problem = audio_problem(path)
    if problem:
        return problem
    info = soundfile.info(str(path))
    return TranscribedExample(where, str(path), text, info.frames / info.samplerate, info.samplerate)


def _from_row(row: Row, text_field: str, audio_field: str, transcribed: bool) -> TranscribedExample | str:
    data = row.data
    present = ", ".join(sorted(data)) or "none"
    text = None
    if transcribed:
        if text_field not in data:
            return f"missing transcript field '{text_field}' (fields present: {present}); set data.text_field"
        text = data[text_field]
        if not isinstance(text, str) or not text.strip():
            return f"empty transcript in field '{text_field}'; fill it or remove the row"
        text = text.strip()
    value = data.get(audio_field)
    if audio_field not in data:
        return f"missing audio field '{audio_field}' (fields present: {present}); set speech.audio_field"
    if not isinstance(value, str) or not value.strip():
        return f"audio field '{audio_field}' is empty; give the row its audio file or remove it"
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(row.source).parent / path  # paths in a table are relative to the table
    if not path.is_file():
        return f"audio file not found: {path}"
    return _clip(row.where, path, text)


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def read_transcript_folder(folder: Path, transcribed: bool = True):
    """Every audio file below `folder`, its transcript in the same-named .txt beside it."""
    examples, problems = [], []
    files = _audio_files(folder)
    if not files:
        raise TunesmithError(f"{folder}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in it")
    for path in files:
        text = None
        if transcribed:
            transcript = path.with_suffix(".txt")
            if not transcript.is_file():
                problems.append(f"{path}: no transcript; put it in {transcript.name} beside the audio file")
                continue
            text = transcript.read_text(encoding="utf-8", errors="replace").strip()
            if not text:
                problems.append(f"{transcript}: empty transcript; write what is said or remove the clip")
                continue
        result = _clip(str(path), path, text)
        (problems.append(f"{path}: {result}") if isinstance(result, str) else examples.append(result))
    return examples, problems


def read_transcribed(source: str, data: DataConfig, settings: SpeechConfig, transcribed: bool = True):
    """(examples, problems) from a table or a folder; each problem names its file:line (or file) and the fix."""
    path = Path(source)
    if not path.exists():
        raise TunesmithError(
            f"{path}: not found; pass a table (JSONL/CSV/Parquet) or a folder of audio files"
        )
    if path.is_dir() and not (path / "dataset_info.json").exists():
        return read_transcript_folder(path, transcribed)
    examples, problems = [], []
    for row in read_rows(path):
        result = row.error or _from_row(row, data.text_field, settings.audio_field, transcribed)
        (problems.append(f"{row.where}: {result}") if isinstance(result, str) else examples.append(result))
    return examples, problems


def seeded_split(examples: list, ratio: float, seed: int) -> tuple[list, list]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(len(examples) * ratio))] if len(examples) > 1 else [])
    return [e for i, e in enumerate(examples) if i not in held], [
        e for i, e in enumerate(examples) if i in held
    ]


def check_speech(cfg: DataConfig, settings: SpeechConfig) -> CheckedData:
    """Read, validate, deduplicate and split a speech data set (train, validation, test)."""
    train, problems = read_transcribed(cfg.train_file, cfg, settings)
    validation, test = [], []
    if cfg.validation_file:
        validation, more = read_transcribed(cfg.validation_file, cfg, settings)
        problems += more
    if cfg.test_file:
        test, more = read_transcribed(cfg.test_file, cfg, settings)
        problems += more
    read = len(train) + len(validation) + len(test) + len(problems)
    report = {"modality": "speech", **rows_report(cfg, "audio_transcript", problems, read)}
    if problems and cfg.on_error == "stop":
        return CheckedData([], [], report, problems)
    held_out = f"{cfg.validation_ratio:g} held out (seed {cfg.seed})"
    train, validation, test = three_splits(train, validation, test, cfg, report, seeded_split, held_out)
    report["seconds"] = _seconds_stats(
        [e.seconds for e in train + validation + test]
    )  # vs the model's window
    report["sample_rates"] = sorted({e.sample_rate for e in train + validation + test})
    return CheckedData(train, validation, report, problems, test)


def load_processor(model_path: str, cfg: Config):
    """The model's feature extractor and tokenizer; multilingual Whisper's tokenizer gets the language and task
    tokens every transcript starts with (<|startoftranscript|><|en|><|transcribe|><|notimestamps|>)."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    try:
        extractor = AutoFeatureExtractor.from_pretrained(model_path, revision=cfg.model.revision)
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg.model.revision)
    except (OSError, ValueError) as exc:
        raise TunesmithError(
            f"model.name: {model_path} has no feature extractor and tokenizer ({exc.__class__.__name__}); save "
            "them next to the weights (WhisperProcessor.save_pretrained(folder))"
        ) from None
    if not hasattr(extractor, "n_samples"):
        raise TunesmithError(
            f"model.name: {model_path}'s feature extractor ({type(extractor).__name__}) is not Whisper's; "
            "speech-recognition trains Whisper-style encoder-decoder models (CTC models are not supported yet)"
        )
    if hasattr(tokenizer, "set_prefix_tokens"):
        settings = cfg.section(SECTION)
        if settings.language and "<|startoftranscript|>" not in tokenizer.get_vocab():
            raise TunesmithError(
                f"speech.language: {model_path}'s tokenizer has no language tokens; unset it"
            )
        tokenizer.set_prefix_tokens(language=settings.language, task=settings.task, predict_timestamps=False)
    return extractor, tokenizer


class SpeechFeatures:
    """The model's feature extractor and tokenizer applied to examples: audio resampled to the model's rate and
    kept to its window, transcripts tokenized with the language/task prefix; what was changed is counted."""

    def __init__(self, extractor, tokenizer, max_label_tokens: int, on_overflow: str):
        self.extractor, self.tokenizer = extractor, tokenizer
        self.rate = extractor.sampling_rate
        self.window_seconds = extractor.n_samples / self.rate  # Whisper: 30 s
        self.max_label_tokens, self.on_overflow = max_label_tokens, on_overflow

    def prepare(self, examples: list[TranscribedExample]) -> tuple[list[dict], dict]:
        """Rows {"path", "labels"} (labels only for transcribed examples) and the counts of what was changed."""
        report = {
            "sampling_rate": self.rate,
            "window_seconds": self.window_seconds,
            "resampled": sum(e.sample_rate != self.rate for e in examples),
            "over_window": 0,
            "over_max_label_tokens": 0,
            "max_label_tokens": self.max_label_tokens,
            "action": "dropped" if self.on_overflow == "drop" else "cut",
            "seconds": _seconds_stats([e.seconds for e in examples]),
        }
        rows = []
        for example in examples:
            row = {"path": example.path, "where": example.where}
            over = example.seconds > self.window_seconds
            report["over_window"] += over
            if example.text is not None:
                labels = self.tokenizer(example.text).input_ids
                too_long = len(labels) > self.max_label_tokens
                report["over_max_label_tokens"] += too_long
                if too_long:  # the end-of-text token is kept, so the model still learns to stop
                    labels = labels[: self.max_label_tokens - 1] + labels[-1:]
                over = over or too_long
                row["labels"] = labels
            if over and self.on_overflow == "drop":
                continue
            rows.append(row)
        return rows, report

    def features(self, clips: list[np.ndarray]) -> torch.Tensor:
        """Log-mel features, every clip padded (or cut) to the model's window: Whisper's encoder takes no other
        length, and a clip's features do not depend on the others in its batch."""
        return self.extractor(clips, sampling_rate=self.rate, return_tensors="pt").input_features

    def load(self, path) -> np.ndarray:
        return read_audio(path, self.rate)[: self.extractor.n_samples]


def _seconds_stats(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    values = np.asarray(seconds)
    return {
        "min": round(float(values.min()), 3),
        "mean": round(float(values.mean()), 3),
        "max": round(float(values.max()), 3),
    }


class SpeechCollator:
    """Audio decoded and turned into features one batch at a time; labels padded to the longest in the batch with
    -100 (ignored by the loss). The decoder start token is left out of the labels: the model shifts them right
    and puts it in front itself (as in Hugging Face's Whisper fine-tuning guide)."""

    unit = "ex"

    def __init__(self, speech: SpeechFeatures, decoder_start_token_id: int):
        self.speech, self.start_id = speech, decoder_start_token_id
        self.real_tokens = 0  # examples: the progress bar's and run.json's throughput unit

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {"input_features": self.speech.features([self.speech.load(row["path"]) for row in rows])}
        if "labels" in rows[0]:
            batch["labels"] = pad_labels([row["labels"] for row in rows], self.start_id)
        self.real_tokens += len(rows)
        return batch


def pad_labels(labels: list[list[int]], decoder_start_token_id: int) -> torch.Tensor:
    """Token rows padded with -100 to the longest; a leading decoder start token (the tokenizer's prefix) dropped."""
    if all(row and row[0] == decoder_start_token_id for row in labels):
        labels = [row[1:] for row in labels]
    width = max(len(row) for row in labels)
    padded = torch.full((len(labels), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(labels):
        padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return padded
