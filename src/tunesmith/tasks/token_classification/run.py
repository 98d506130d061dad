"""A finished token-classification run: its tagger, `tunesmith predict` and `tunesmith eval` with it, and export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from tunesmith.config import Config
from tunesmith.data.prepare import bad_rows_error
from tunesmith.errors import TunesmithError
from tunesmith.methods import get_method
from tunesmith.models.exportable import MAX_VALIDATION_EXAMPLES, Exportable, merged
from tunesmith.models.heads import fresh_head_unless_same_labels, label_arguments
from tunesmith.models.loading import default_cache_dir, load_model, load_tokenizer, resolve_model
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.common import data_for_eval, prediction_target
from tunesmith.tasks.token_classification import tokens
from tunesmith.tasks.token_classification.data import TaggedExample, check_tagged, read_tagged, split_words
from tunesmith.tasks.token_classification.metrics import entity_scores
from tunesmith.tasks.token_classification.tokens import max_tokens

AUTO_CLASS = "AutoModelForTokenClassification"


def load_tagging_model(weights: str, cfg: Config, labels: list[str], quantization=None):
    return load_model(weights, cfg.model, quantization, AUTO_CLASS, **label_arguments(labels))


class Tagger:
    """A finished run's token classifier (full weights, or base + adapter) with its tokenizer: words in, tags out."""

    def __init__(self, run: RunFolder, adapter_name: str = "default"):
        summary = run.finished_summary("tag")
        self.cfg = cfg = run.load_config()
        self.settings = cfg.section("token_classification")
        self.labels = summary.labels
        base_path = summary.base_model_path
        if not base_path or not Path(base_path).exists():
            base_path = resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))
        self.base_path = base_path
        self.tokenizer = load_tokenizer(str(run.model_dir), cfg.model)
        self.model = get_method(cfg.method.name).reload(  # full weights, or the adapter over its base
            lambda weights, quantization: load_tagging_model(weights, cfg, self.labels, quantization),
            run.model_dir,
            base_path,
            cfg.method,
            adapter_name,
        )
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()

    def encode(self, examples: list) -> tokens.Encoded:
        tag_ids = {tag: i for i, tag in enumerate(self.labels)}
        return tokens.encode(
            self.tokenizer,
            examples,
            tag_ids,
            max_tokens(self.cfg, self.tokenizer),
            self.settings.label_all_subtokens,
        )

    def word_tags(self, examples: list, batch_size: int = 32) -> list[list[str]]:
        """Each word's predicted tag; words past max_length are O."""
        encoded = self.encode([replace(e, tags=()) for e in examples])
        collator = tokens.TaggingCollator(self.tokenizer.pad_token_id or 0)
        ids = tokens.predict_ids(self.model, encoded.rows, collator, batch_size)
        return tokens.word_predictions(ids, encoded.word_ids, [len(e.words) for e in examples], self.labels)

    def entities(self, texts: list[str], batch_size: int = 32) -> list[list[dict]]:
        """Each text's entities as {start, end, label, text}, with character offsets into the text."""
        examples = []
        for number, text in enumerate(texts):
            words, offsets = split_words(text)
            examples.append(TaggedExample(f"input:{number}", words, (), text, offsets))
        return [
            spans(e, tags) for e, tags in zip(examples, self.word_tags(examples, batch_size), strict=True)
        ]


def spans(example, tags: list[str]) -> list[dict]:
    """The entities a row of predicted word tags marks, as character spans of the example's text."""
    text = example.text if example.text is not None else " ".join(example.words)
    offsets = example.offsets or split_offsets(example.words)
    found, open_entity = [], None
    for (start, end), tag in zip(offsets, tags, strict=True):
        continues = open_entity and tag == f"I-{open_entity['label']}"
        if continues:
            open_entity["end"] = end
            continue
        if open_entity:
            found.append(open_entity)
        open_entity = {"start": start, "end": end, "label": tag[2:]} if tag != "O" else None
    if open_entity:
        found.append(open_entity)
    return [entity | {"text": text[entity["start"] : entity["end"]]} for entity in found]


def split_offsets(words) -> tuple[tuple[int, int], ...]:
    """Offsets of words joined by single spaces."""
    offsets, position = [], 0
    for word in words:
        offsets.append((position, position + len(word)))
        position += len(word) + 1
    return tuple(offsets)


def predict(run: RunFolder, source, output, batch_size: int) -> dict:
    """Tag every row of a table (words, or text) or CoNLL file; write each row's entities as JSONL."""
    tagger = Tagger(run)
    examples, problems = read_tagged(str(source), tagger.cfg.data, tagger.settings, labelled=False)
    target = prediction_target(run, source, output, problems, "tagged", (".jsonl",))
    tags = tagger.word_tags(examples, batch_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for example, row in zip(examples, tags, strict=True):
            record = {"input": example.where, "words": list(example.words), "tags": row}
            record["entities"] = spans(example, row)
            handle.write(json.dumps(record) + "\n")
    temporary.replace(target)
    return {"output": str(target), "rows": len(examples)}


def evaluate(run: RunFolder, data, baseline: bool) -> dict:
    """Entity-level precision/recall/F1 per type and overall; with baseline, the base body with a new head."""
    from transformers import set_seed

    tagger = Tagger(run)
    cfg = tagger.cfg
    checked = check_tagged(data_for_eval(cfg.data, data), tagger.settings)
    if checked.problems and cfg.data.on_error == "stop":
        raise bad_rows_error(checked)
    split = "data" if data else ("test" if checked.test else "validation")
    examples = checked.train if data else (checked.test or checked.validation)
    if not examples:
        raise TunesmithError(f"eval: no tagged examples in {data or 'the validation split'}")
    gold = [list(e.tags) for e in examples]
    tuned = entity_scores(gold, tagger.word_tags(examples, cfg.eval.batch_size))
    base = None
    if baseline:  # the untouched body with a new head for these tags, seeded as training seeded it
        set_seed(cfg.train.seed)
        network = load_tagging_model(tagger.base_path, cfg, tagger.labels)
        fresh_head_unless_same_labels(network, tagger.base_path, tagger.labels)
        tagger.model = network.to(tagger.device).eval()
        base = entity_scores(gold, tagger.word_tags(examples, cfg.eval.batch_size))
    return {"task": cfg.task, "split": split, "examples": len(examples), "tuned": tuned, "baseline": base}


def exportable(run: RunFolder) -> Exportable:
    """The merged tagger, probes of two shapes, and validation batches for the tag-accuracy check."""
    tagger = Tagger(run)
    cfg = tagger.cfg
    checked = check_tagged(cfg.data.model_copy(update={"on_error": "skip"}), tagger.settings)
    examples = (checked.validation or checked.train)[:MAX_VALIDATION_EXAMPLES]
    rows = tagger.encode(examples).rows
    model = merged(tagger.model)
    collate = tokens.TaggingCollator(tagger.tokenizer.pad_token_id or 0)
    batches = [collate(rows[s : s + 16]) for s in range(0, len(rows), 16)]
    names = [name for name in batches[0] if name != "labels"]
    alone = collate([{k: v for k, v in rows[0].items() if k != "labels"}])
    probes = [{k: alone[k] for k in names}, {k: batches[0][k][:3] for k in names}]
    return Exportable(
        task=cfg.task,
        auto_class=AUTO_CLASS,
        metric_name="validation_accuracy",  # of the tagged words (their first sub-tokens): int8's 2-point gate
        metric_sums=tokens.correct_sums,
        model=model,
        processor=tagger.tokenizer,
        input_names=names,
        probes=probes,
        validation=[({k: b[k] for k in names}, b["labels"]) for b in batches],
    )
