"""Image and audio files: check that they decode, and load them the way a model expects."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
TEXT_SUFFIXES = {".txt"}


def image_problem(path: Path) -> str | None:
    """Why this image cannot be used, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"unreadable image ({exc.__class__.__name__}: {exc})"
    return None


def load_image(path: str, channels: int):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("L" if channels == 1 else "RGB")


def augment_image(image, rng: random.Random, scale: tuple[float, float] = (0.75, 1.0)):
    """Random resized crop (75-100% of the area, aspect kept) and a horizontal flip half the time."""
    from PIL import Image

    width, height = image.size
    side = rng.uniform(*scale) ** 0.5
    crop_w, crop_h = max(1, round(width * side)), max(1, round(height * side))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BILINEAR)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def audio_problem(path: Path) -> str | None:
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        return f"unreadable audio ({exc})"
    if info.frames == 0:
        return "empty audio file (no samples)"
    return None


def load_audio(path: str, sampling_rate: int, seconds: float, rng: random.Random | None = None) -> np.ndarray:
    """Mono float32 at the model's rate, cut or zero-padded to `seconds` (a random window in training)."""
    samples = read_audio(path, sampling_rate)
    length = round(seconds * sampling_rate)
    if len(samples) > length:
        start = rng.randint(0, len(samples) - length) if rng else 0
        return samples[start : start + length]
    return np.pad(samples, (0, length - len(samples)))


def read_audio(path, sampling_rate: int) -> np.ndarray:
    """The whole file as mono float32 at `sampling_rate` (resampled when the file has another rate)."""
    import soundfile
    from scipy.signal import resample_poly

    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    if rate != sampling_rate:
        divisor = np.gcd(rate, sampling_rate)
        samples = resample_poly(samples, sampling_rate // divisor, rate // divisor).astype(np.float32)
    return samples
