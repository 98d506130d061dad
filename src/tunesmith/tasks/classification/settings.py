"""The `classification:` config section (text-, image- and audio-classification): where the labels are, and how
inputs are prepared. data.on_overflow and data.max_length stay in `data:`, shared with the other tasks."""

from __future__ import annotations

from pydantic import Field

from tunesmith.data.labelled import LabelSettings


class ClassificationConfig(LabelSettings):
    """task: text-, image- or audio-classification. The label, text-pair and file columns and the label set
    (LabelSettings, which the forgetting probe's reference sets are read with too), then per modality."""

    max_windows: int = Field(
        4,
        ge=1,
        description="text, data.on_overflow windows: the most windows of one text used in training (the first "
        "ones); evaluation and prediction read every window",
    )
    augment: bool = Field(False, description="images: random resized crop and horizontal flip in training")
    clip_seconds: float = Field(1.0, gt=0, description="audio: clips are cut or zero-padded to this length")
