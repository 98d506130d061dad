"""The `seq2seq:` config section: where the source and target texts are, and how they are read."""

from __future__ import annotations

from pydantic import Field

from tunesmith.config import Section

SECTION = "seq2seq"  # the top-level config key


class Seq2SeqConfig(Section):
    """task: seq2seq. The data's field names, the source prefix and the target length."""

    source_field: str = Field("source", description="the column the model reads")
    target_field: str = Field("target", description="the column it should write")
    source_prefix: str = Field("", description="put before every source, e.g. 'summarize: ' for T5")
    max_target_length: int = Field(
        128, ge=2, description="targets longer than this many tokens follow data.on_overflow (counted)"
    )
