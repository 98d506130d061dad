"""The `speech:` config section: where the audio is, Whisper's language and task tokens, SpecAugment, what WER/CER
are computed on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.config import Section

SECTION = "speech"  # the top-level config key


class SpeechConfig(Section):
    """task: speech-recognition. Whisper's language and task tokens, SpecAugment, what WER/CER are computed on."""

    audio_field: str = Field("audio", description="tables: the audio file column (relative to the table)")
    language: str | None = Field(
        None,
        description="multilingual Whisper: the language token every transcript starts with (en, english, hi, "
        "...); leave unset for English-only models",
    )
    task: Literal["transcribe", "translate"] = Field(
        "transcribe",
        description="multilingual Whisper: the task token (translate: speech in, English text out)",
    )
    spec_augment: bool | Literal["auto"] = Field(
        "auto",
        description="SpecAugment masking of the input features in training; auto keeps the model config's "
        "apply_spec_augment (true turns it on with the config's mask_time_prob / mask_feature_prob)",
    )
    freeze_encoder: bool = Field(
        False, description="the audio encoder stays frozen whatever the method (the decoder alone learns)"
    )
    normalizer: Literal["english", "basic", "none"] = Field(
        "english",
        description="texts are normalized before WER/CER: english (Whisper's EnglishTextNormalizer), basic "
        "(Whisper's BasicTextNormalizer: lower case, no punctuation), none (as written)",
    )
    max_target_length: int = Field(
        128,
        ge=2,
        description="transcripts longer than this many tokens (capped by the model's max_target_positions) "
        "follow data.on_overflow (counted)",
    )
    max_new_tokens: int = Field(128, gt=0, description="the longest transcript generated, in tokens")
