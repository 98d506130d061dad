"""A finished seq2seq run: its tuned model, `tunesmith predict` and `tunesmith eval` on it, and what export needs."""

from __future__ import annotations

import csv
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config import Config
from tunesmith.console import say
from tunesmith.errors import TunesmithError
from tunesmith.models.exportable import MAX_VALIDATION_EXAMPLES, Exportable, merged
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.common import (
    data_for_eval,
    encoder_decoder_exportable,
    prediction_target,
    stop_on_bad_rows,
)
from tunesmith.tasks.generator import base_model_path, reload_weights
from tunesmith.tasks.seq2seq.data import (
    Seq2SeqCollator,
    SourceEncoder,
    check_pairs,
    read_sources,
    tokenize_pairs,
)
from tunesmith.tasks.seq2seq.metrics import generate_for, generate_targets, test_scores
from tunesmith.tasks.seq2seq.settings import SECTION

AUTO_CLASS = "AutoModelForSeq2SeqLM"


@dataclass
class TunedSeq2Seq:
    """A finished run's model (base + adapter, or full weights), its config, and the source encoder it trained with
    (named `renderer`, as the causal-LM run's: the server asks it for prompt tokens and stop tokens)."""

    model: torch.nn.Module
    renderer: SourceEncoder
    cfg: Config

    def answer(self, sources: list[str], max_new_tokens: int = 128, temperature: float = 0.0) -> list[str]:
        """The target for each source, encoded exactly as in training (seq2seq.source_prefix included)."""
        ids = [self.renderer.encode_source(text) for text in sources]
        return generate_targets(
            self.model,
            ids,
            self.renderer.tokenizer,
            self.renderer.stop_token_ids(),
            max_new_tokens,
            8,
            temperature,
        )


def nothing_left(cfg: Config) -> TunesmithError:
    data, longest_target = cfg.data, cfg.section(SECTION).max_target_length
    return TunesmithError(
        f"{data.train_file}: every training pair is longer than data.max_length={data.max_length} (source) or "
        f"seq2seq.max_target_length={longest_target} (target); raise them or set data.on_overflow: truncate"
    )


def load_run(run: RunFolder, adapter_name: str = "default", into=None) -> TunedSeq2Seq:
    """The tuned model of a finished run; `into`: a peft model over the same base that takes this adapter too."""
    cfg = run.load_config()
    if not run.model_dir.exists():
        raise TunesmithError(
            f"{run.path}: no trained model yet (status: {run.read_summary().status}); finish training or --resume it"
        )
    encoder = SourceEncoder(load_tokenizer(str(run.model_dir), cfg.model), cfg.section(SECTION).source_prefix)
    return TunedSeq2Seq(reload_weights(run, cfg, adapter_name, into, AUTO_CLASS), encoder, cfg)


def predict(run: RunFolder, source, output, batch_size: int) -> dict:
    """Write a generated target for every row of a table (JSONL or CSV: input, source, prediction)."""
    tuned = load_run(run)
    cfg = tuned.cfg
    examples, problems = read_sources(str(source), cfg.section(SECTION))
    target = prediction_target(run, source, output, problems, "predicted", (".jsonl", ".csv"))
    # Every input gets an answer: an over-long source is cut (keeping EOS) and counted, as in training's truncate.
    data = cfg.data.model_copy(update={"on_overflow": "truncate"})
    rows, _, over = tokenize_pairs(examples, data, 10**9, tuned.renderer)
    if over["sources"]["count"]:
        say(f"predict: {over['sources']['count']} source(s) longer than {data.max_length} tokens were cut")
    outputs = generate_targets(
        tuned.model,
        [row["input_ids"] for row in rows],
        tuned.renderer.tokenizer,
        tuned.renderer.stop_token_ids(),
        cfg.eval.max_new_tokens,
        batch_size,
    )
    records = [
        {"input": e.where, "source": e.source, "prediction": text}
        for e, text in zip(examples, outputs, strict=True)
    ]
    _write(target, records)
    return {"output": str(target), "rows": len(records), "sources_cut": over["sources"]["count"]}


def _write(target: Path, records: list[dict]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        if target.suffix.lower() == ".csv":
            writer = csv.DictWriter(handle, fieldnames=["input", "source", "prediction"])
            writer.writeheader()
            writer.writerows(records)
        else:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    temporary.replace(target)


def evaluate(run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
    """Loss per target token on every example and ROUGE/BLEU/exact match on `generations` of them; the base
    model beside it with `baseline`. Scored on the test split when the run has one."""
    tuned = load_run(run)
    cfg = tuned.cfg
    settings = cfg.section(SECTION)
    generations = cfg.eval.generations if generations is None else generations
    data_cfg = data_for_eval(cfg.data, data)
    checked = stop_on_bad_rows(check_pairs(data_cfg, settings), data_cfg)
    split = "data" if data else ("test" if checked.test else "validation")  # test: nothing was chosen on it
    examples = {"data": checked.train, "test": checked.test, "validation": checked.validation}[split]
    rows, kept, over = tokenize_pairs(examples, data_cfg, settings.max_target_length, tuned.renderer)
    if not rows:
        raise TunesmithError(f"eval: no examples to score in {data or f'the {split} split'}")
    for side in ("sources", "targets"):
        if over[side]["count"]:
            say(f"eval: {over[side]['count']} {side} over the length limit were {over[side]['action']}ped")
    scoring = cfg.eval.model_copy(update={"generations": generations})
    count = min(len(rows), generations)

    def score(network) -> tuple[dict, list[str]]:
        scores = test_scores(network, tuned.renderer, rows, kept, scoring)
        outputs = generate_for(network, tuned.renderer, rows[:count], cfg.eval) if count else []
        return scores, outputs

    scores, outputs = score(tuned.model)
    base, base_outputs = None, [None] * count
    if baseline:
        if hasattr(tuned.model, "disable_adapter"):  # LoRA: the base is the same weights with the adapter off
            context, base_model = tuned.model.disable_adapter(), tuned.model
        else:
            base_model = load_model(base_model_path(run, cfg), cfg.model, auto_class=AUTO_CLASS)
            context = nullcontext()
        with context:
            base, base_outputs = score(base_model)
    generated = [
        {"where": e.where, "prompt": e.source, "reference": e.target, "output": o, "base_output": b}
        for e, o, b in zip(kept[:count], outputs, base_outputs, strict=True)
    ]
    return {
        "task": cfg.task,
        "split": split,
        "examples": len(rows),
        "tuned": scores,
        "baseline": base,
        "generated": generated,
    }


PROBE_SOURCES = (["Write a headline about the weather."], ["Hi", "Sum up: rain, then sun, then wind."])


def exportable(run: RunFolder, auto_class: str) -> Exportable:
    """The merged model; probes of encoder and decoder ids of two shapes (the second padded); validation batches."""
    tuned = load_run(run)
    encoder, cfg = tuned.renderer, tuned.cfg
    model = merged(tuned.model)
    collate = Seq2SeqCollator(encoder.pad_token_id)

    def inputs(batch: dict) -> dict:
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "decoder_input_ids": decoder_input_ids,
        }

    probes = []
    for sources in PROBE_SOURCES:
        rows = [
            {"input_ids": encoder.encode_source(s), "labels": encoder.encode_target(s)[:6]} for s in sources
        ]
        probes.append(inputs(collate(rows)))
    settings = cfg.section(SECTION)
    checked = stop_on_bad_rows(check_pairs(cfg.data, settings), cfg.data)
    rows, _, _ = tokenize_pairs(checked.validation, cfg.data, settings.max_target_length, encoder)
    validation = []
    for start in range(0, min(len(rows), MAX_VALIDATION_EXAMPLES), 8):
        batch = collate(rows[start : start + 8])
        validation.append((inputs(batch), batch["labels"]))
    return encoder_decoder_exportable(cfg, auto_class, model, encoder.tokenizer, probes, validation)
