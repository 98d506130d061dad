"""Token lengths for `tunesmith data check`: rows over data.max_length per split, the longest named by file:line."""

from __future__ import annotations

from tunesmith.config import DataConfig
from tunesmith.data.labelled import LabelledExample
from tunesmith.data.prepare import CheckedData, encode
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.data.validate import Example

SPLITS = ("train", "validation", "test")
NO_TOKENIZER = (
    "token lengths not checked: a data file alone names no tokenizer; to count rows over data.max_length, "
    "run `tunesmith data check CONFIG.yaml` with the config whose model.name you will train"
)


def not_checked(reason: str = NO_TOKENIZER) -> dict:
    return {"checked": False, "reason": reason}


def token_count(example, renderer: Renderer, mask: LossMask) -> int | None:
    """Tokens the model sees for this example, rendered as training renders it; None for images and audio."""
    counts_itself = getattr(example, "token_count", None)
    if counts_itself is not None:  # a task package's own example type counts its tokens, given the renderer
        return counts_itself(renderer)
    if isinstance(example, Example):
        return len(encode(example, renderer, mask)["input_ids"])
    if isinstance(example, LabelledExample):
        if example.text is None:
            return None
        return len(renderer.tokenizer(example.text, example.text_pair, truncation=False)["input_ids"])
    return None


def length_report(checked: CheckedData, cfg: DataConfig, renderer: Renderer, shown: int = 5) -> dict:
    """Per split: examples counted, how many exceed data.max_length, and the `shown` longest with file:line."""
    report: dict = {"checked": True, "max_length": cfg.max_length, "on_overflow": cfg.on_overflow}
    for split in SPLITS:
        examples = getattr(checked, split)
        counted = [
            (n, e.where) for e in examples if (n := token_count(e, renderer, LossMask.of(cfg))) is not None
        ]
        if examples and not counted:
            return not_checked("token lengths do not apply: the examples are images or audio")
        counted.sort(key=lambda pair: -pair[0])
        report[split] = {
            "examples": len(counted),
            "over_max_length": sum(n > cfg.max_length for n, _ in counted),
            "longest": [f"{where}: {n} tokens" for n, where in counted[:shown]],
        }
    return report


def describe(report: dict) -> list[str]:
    """Lines for the terminal: the counts per split and the longest rows, or why lengths were not checked."""
    if not report.get("checked"):
        return [report["reason"]]
    lines = []
    for split in SPLITS:
        part = report.get(split)
        if not part or not part["examples"]:
            continue
        lines.append(
            f"{split}: {part['over_max_length']} of {part['examples']} rows over max_length={report['max_length']} "
            f"(data.on_overflow: {report['on_overflow']}); longest: {', '.join(part['longest'][:3])}"
        )
    return lines
