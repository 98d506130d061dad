"""A few examples as the model will really see them: rendered by the training template, the trained part marked.

`tunesmith data check --preview N` prints them and the web UI shows them. Text examples are rendered and tokenized
exactly as training does (`prepare.encode`), then cut back into runs of tokens that are trained on (the loss is
computed there) or only read; other examples (labelled texts, preference pairs, tagged tokens, files) are shown as
their fields.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass

from tunesmith.data.prepare import IGNORE, encode
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.data.validate import Example


def segments(ids: list[int], labels: list[int], tokenizer) -> list[dict]:
    """Consecutive runs of tokens with the same trained/read flag, each decoded as one piece of text."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(ids, labels, strict=True):
        trained = label != IGNORE
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return [{"text": tokenizer.decode(tokens), "trained": trained} for trained, tokens in runs]


def fields_of(example) -> dict:
    """An example that is not rendered text, as its fields (its file:line aside)."""
    if not is_dataclass(example):
        return {"value": str(example)}
    shown = {}
    for item in fields(example):
        value = getattr(example, item.name)
        if item.name != "where" and value is not None:
            shown[item.name] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return shown


def preview(examples: list, renderer: Renderer | None, mask: LossMask, count: int) -> list[dict]:
    """The first `count` examples: {where, segments} when rendered by a template, else {where, fields}."""
    shown = []
    for example in examples[:count]:
        where = getattr(example, "where", "")
        if isinstance(example, Example) and renderer is not None:
            item = encode(example, renderer, mask)
            parts = segments(item["input_ids"], item["labels"], renderer.tokenizer)
            trained = sum(label != IGNORE for label in item["labels"])
            shown.append(
                {
                    "where": where,
                    "segments": parts,
                    "tokens": len(item["input_ids"]),
                    "trained_tokens": trained,
                }
            )
        else:
            shown.append({"where": where, "fields": fields_of(example)})
    return shown


def describe(shown: list[dict]) -> list[str]:
    """Terminal lines: each example with its trained part between [[ and ]]."""
    lines = []
    for item in shown:
        lines.append(f"--- {item['where']}")
        if "segments" in item:
            text = "".join(f"[[{s['text']}]]" if s["trained"] else s["text"] for s in item["segments"])
            lines.append(text)
            lines.append(f"({item['tokens']} tokens, {item['trained_tokens']} trained: between [[ and ]])")
        else:
            lines.extend(f"{key}: {value}" for key, value in item["fields"].items())
    return lines
