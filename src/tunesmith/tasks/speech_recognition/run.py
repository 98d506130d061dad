"""A finished speech-recognition run: its transcriber, `tunesmith predict` and `tunesmith eval` with it, and export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from tunesmith.console import say
from tunesmith.errors import TunesmithError
from tunesmith.methods import get_method
from tunesmith.models.exportable import MAX_VALIDATION_EXAMPLES, Exportable, merged
from tunesmith.models.loading import default_cache_dir, load_model, resolve_model
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.common import (
    data_for_eval,
    encoder_decoder_exportable,
    prediction_target,
    stop_on_bad_rows,
)
from tunesmith.tasks.speech_recognition.data import (
    SpeechCollator,
    SpeechFeatures,
    check_speech,
    load_processor,
    read_transcribed,
)
from tunesmith.tasks.speech_recognition.metrics import (
    error_rates,
    example_wer,
    generation_arguments,
    transcribe,
)
from tunesmith.tasks.speech_recognition.settings import SECTION

AUTO_CLASS = "AutoModelForSpeechSeq2Seq"


class Transcriber:
    """A finished run's model (full weights, or base + adapter) with its feature extractor and tokenizer;
    `settings`: the run's speech section (language, task, normalizer)."""

    def __init__(self, run: RunFolder, base_only: bool = False):
        summary = run.finished_summary("transcribe")
        self.cfg = cfg = run.load_config()
        self.settings = settings = cfg.section(SECTION)
        self.extractor, self.tokenizer = load_processor(str(run.model_dir), cfg)
        base_path = summary.base_model_path
        if not base_path or not Path(base_path).exists():
            base_path = resolve_model(cfg.model, default_cache_dir(cfg.output.cache_dir))
        self.base_path = base_path

        def load(weights: str, quantization):
            return load_model(weights, cfg.model, quantization, AUTO_CLASS)

        if base_only:  # the untouched base, for `tunesmith eval --baseline`
            self.model = load(base_path, None)
        else:  # full weights, or the adapter over its base: the method says which
            self.model = get_method(cfg.method.name).reload(load, run.model_dir, base_path, cfg.method)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()
        self.options = generation_arguments(self.model, settings.language, settings.task)
        max_labels = min(settings.max_target_length, self.model.config.max_target_positions)
        # Every input gets a transcript: a clip longer than the window is cut to it (and counted by the caller).
        self.speech = SpeechFeatures(self.extractor, self.tokenizer, max_labels, "truncate")
        self.window_seconds = self.speech.window_seconds

    def transcribe_clips(self, clips: list[np.ndarray], batch_size: int = 8) -> list[str]:
        """Transcripts of mono float32 clips at the extractor's sampling rate."""
        texts = []
        for start in range(0, len(clips), batch_size):
            chunk = [clip[: self.extractor.n_samples] for clip in clips[start : start + batch_size]]
            texts += transcribe(
                self.model,
                self.speech.features(chunk),
                self.tokenizer,
                self.settings.max_new_tokens,
                self.options,
            )
        return texts

    def transcribe_files(self, paths: list[str], batch_size: int = 8) -> list[str]:
        texts = []
        for start in range(0, len(paths), batch_size):
            clips = [self.speech.load(path) for path in paths[start : start + batch_size]]
            texts += self.transcribe_clips(clips, batch_size)
        return texts


def predict(run: RunFolder, source, output, batch_size: int) -> dict:
    """Transcribe every clip of a folder (or every row of a table's audio field); write JSONL or CSV."""
    transcriber = Transcriber(run)
    examples, problems = read_transcribed(
        str(source), transcriber.cfg.data, transcriber.settings, transcribed=False
    )
    target = prediction_target(run, source, output, problems, "transcribed", (".jsonl", ".csv"))
    cut = [e for e in examples if e.seconds > transcriber.window_seconds]
    if cut:
        say(
            f"predict: {len(cut)} clip(s) longer than the model's {transcriber.window_seconds:g} s window were "
            f"transcribed from their first {transcriber.window_seconds:g} s (e.g. {cut[0].where})"
        )
    texts = transcriber.transcribe_files([e.path for e in examples], batch_size)
    records = [
        {
            "input": e.where,
            "text": text,
            "seconds": round(e.seconds, 3),
            "cut": e.seconds > transcriber.window_seconds,
        }
        for e, text in zip(examples, texts, strict=True)
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        if target.suffix.lower() == ".csv":
            writer = csv.DictWriter(handle, fieldnames=list(records[0]) if records else ["input", "text"])
            writer.writeheader()
            writer.writerows(records)
        else:
            handle.writelines(json.dumps(record) + "\n" for record in records)
    temporary.replace(target)
    return {"output": str(target), "rows": len(records), "cut_to_window": len(cut)}


def evaluate(run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
    """WER and CER of the tuned model (and with baseline, the untouched base) on every clip of the test split, else
    the validation split, else `data`; transcribed batch by batch. The per-clip transcripts go to
    generations.jsonl, worst-transcribed first."""
    cfg = run.load_config()
    data_cfg = data_for_eval(cfg.data, data)
    checked = stop_on_bad_rows(check_speech(data_cfg, cfg.section(SECTION)), data_cfg)
    split = "data" if data else ("test" if checked.test else "validation")
    examples = checked.train if data else (checked.test or checked.validation)
    if generations:
        examples = examples[:generations]
    if not examples:
        raise TunesmithError(f"eval: no transcribed clips in {data or 'the validation split'}")
    references = [e.text for e in examples]
    paths = [e.path for e in examples]
    tuned = Transcriber(run).transcribe_files(paths, cfg.eval.batch_size)
    base = Transcriber(run, base_only=True).transcribe_files(paths, cfg.eval.batch_size) if baseline else None
    normalizer = cfg.section(SECTION).normalizer
    records = []
    for i, example in enumerate(examples):
        record = {"where": example.where, "reference": example.text, "tuned": tuned[i]}
        record["wer_tuned"] = example_wer(example.text, tuned[i], normalizer)
        if base is not None:
            record |= {"base": base[i], "wer_base": example_wer(example.text, base[i], normalizer)}
        records.append(record)
    records.sort(key=lambda r: -(r["wer_tuned"] or 0.0))
    return {
        "task": cfg.task,
        "split": split,
        "examples": len(examples),
        "tuned": _numbers(error_rates(references, tuned, normalizer)),
        "baseline": _numbers(error_rates(references, base, normalizer)) if base is not None else None,
        "normalizer": normalizer,
        "generated": records,
    }


def _numbers(scores: dict) -> dict:
    """The rates as floats (the eval table and report show float values), counts beside them."""
    return {k: float(v) if k in ("wer", "cer") and v is not None else v for k, v in scores.items()}


def exportable(run: RunFolder) -> Exportable:
    """The merged model with its processor; probes of two shapes (audio features + decoder tokens) and validation
    batches whose metric is the loss per transcript token."""
    from transformers import AutoProcessor

    transcriber = Transcriber(run)
    cfg, speech = transcriber.cfg, transcriber.speech
    model = merged(transcriber.model)
    checked = check_speech(cfg.data.model_copy(update={"on_error": "skip"}), transcriber.settings)
    rows, _ = speech.prepare((checked.validation or checked.train)[:MAX_VALIDATION_EXAMPLES])
    if not rows:
        raise TunesmithError(f"export: {run.path} has no clips left to check the export on")
    collate = SpeechCollator(speech, model.config.decoder_start_token_id)
    batches = []
    for start in range(0, len(rows), 8):
        batch = collate(rows[start : start + 8])
        inputs = {"input_features": batch["input_features"], **_decoder_inputs(model, batch["labels"])}
        batches.append((inputs, batch["labels"]))
    first = batches[0][0]
    short = max(2, first["decoder_input_ids"].shape[1] // 2)  # one clip, fewer decoder tokens: another shape
    probes = [
        {
            "input_features": first["input_features"][:1],
            "decoder_input_ids": first["decoder_input_ids"][:1, :short],
        },
        first,
    ]
    processor = AutoProcessor.from_pretrained(str(run.model_dir))
    return encoder_decoder_exportable(cfg, AUTO_CLASS, model, processor, probes, batches)


def _decoder_inputs(model, labels: torch.Tensor) -> dict:
    """The decoder's input for `labels`: shifted right behind the start token, padding as the pad token."""
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    config = model.config
    return {
        "decoder_input_ids": shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    }
