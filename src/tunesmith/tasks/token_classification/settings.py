"""The `token_classification:` config section: where the words and tags are, and how tags map to sub-tokens."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.config import Section


class TokenClassificationConfig(Section):
    """task: token-classification. Field names of the data and the tagging scheme."""

    tokens_field: str = Field("tokens", description="rows of words: the list of words (pre-split tokens)")
    tags_field: str = Field("tags", description="rows of words: one tag per word (O, B-TYPE, I-TYPE)")
    text_field: str = Field("text", description="rows of text: the text the entities' offsets point into")
    entities_field: str = Field(
        "entities", description="rows of text: a list of {start, end, label} character spans (end exclusive)"
    )
    types: list[str] | None = Field(
        None,
        description="the entity types (e.g. [PER, LOC, ORG]); default: those in the training data. A tag of "
        "another type is a bad row",
    )
    scheme: Literal["iob2", "iob1"] = Field(
        "iob2",
        description="iob2: every entity starts with B-; iob1 (CoNLL-2003's original files): I- may start an "
        "entity, B- only separates two adjacent entities of one type; read into IOB2 (counted)",
    )
    label_all_subtokens: bool = Field(
        False,
        description="false: a word's tag trains and predicts on its first sub-token only (the others are "
        "ignored, -100), as BERT's NER recipe does; true: every sub-token learns the word's tag (I- after B-)",
    )
