"""speech-recognition: audio in, transcript out (Whisper-style encoder-decoder models).

Everything this task needs lives in this package: its config section `speech:` (settings.py), its data (data.py),
its trainer (trainer.py), its scores (metrics.py) and its finished runs (run.py: transcribing, `tunesmith predict`,
`tunesmith eval`, export). It trains through the one pipeline (tasks/pipeline.py) and is registered below.
"""

from __future__ import annotations

import json

from tunesmith.config import Config
from tunesmith.console import is_main, say
from tunesmith.data.media import AUDIO_SUFFIXES
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.forgetting import describe as describe_drift
from tunesmith.evaluation.forgetting import drift
from tunesmith.models.loading import load_model
from tunesmith.registry import register_section, register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.base import Task
from tunesmith.tasks.common import classifier_settings_problems, stop_on_bad_rows
from tunesmith.tasks.pipeline import Prepared
from tunesmith.tasks.speech_recognition import run as speech_recognition_run
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
from tunesmith.tasks.speech_recognition.run import AUTO_CLASS
from tunesmith.tasks.speech_recognition.settings import SECTION, SpeechConfig
from tunesmith.tasks.speech_recognition.trainer import SpeechTrainer
from tunesmith.training.loop import set_up_trainer


def set_spec_augment(model, setting: bool | str) -> dict:
    """SpecAugment (time and feature masking of the log-mel input, in training only) as speech.spec_augment says;
    returns what the model will do, for run.json."""
    config = model.config
    if not hasattr(config, "apply_spec_augment"):
        return {"enabled": False, "reason": f"{type(model).__name__} has no SpecAugment"}
    if setting != "auto":
        config.apply_spec_augment = bool(setting)
    enabled = bool(config.apply_spec_augment)
    masks = {k: getattr(config, k, None) for k in ("mask_time_prob", "mask_feature_prob")}
    return {"enabled": enabled, **masks, "reason": f"speech.spec_augment: {setting}"}


def freeze_encoder(model) -> int:
    """Keep the audio encoder's weights (adapters in it included) as they are; returns how many were frozen."""
    encoder = model.get_encoder()
    frozen = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    encoder.requires_grad_(False)
    return frozen


def print_data_summary(report: dict) -> None:
    say(
        f"data: {report['rows_read']} rows read, {report['bad_rows']} bad, {report.get('duplicates_removed', 0)} "
        f"duplicates removed; {report['train_examples']} train / {report['validation_examples']} validation clips"
    )
    for split, counts in report.get("preprocessing", {}).items():
        if counts["resampled"]:
            say(f"data: {split}: {counts['resampled']} clip(s) resampled to {counts['sampling_rate']} Hz")
        if counts["over_window"]:
            say(
                f"data: {split}: {counts['over_window']} clip(s) longer than the model's "
                f"{counts['window_seconds']:g} s window were {counts['action']} (data.on_overflow)"
            )
        if counts["over_max_label_tokens"]:
            say(
                f"data: {split}: {counts['over_max_label_tokens']} transcript(s) longer than "
                f"{counts['max_label_tokens']} tokens were {counts['action']} (speech.max_target_length)"
            )


def transcripts(model, collator, tokenizer, rows: list[dict], cfg: Config, options: dict) -> list[str]:
    size, speech, longest = cfg.eval.batch_size, collator.speech, cfg.section(SECTION).max_new_tokens
    texts = []
    for start in range(0, len(rows), size):
        features = speech.features([speech.load(row["path"]) for row in rows[start : start + size]])
        texts += transcribe(model, features, tokenizer, longest, options)
    return texts


def _rate(value: float | None) -> str:
    """A WER or CER as printed; None when no reference had words left after normalization."""
    return "n/a (no reference words)" if value is None else f"{value:.4f}"


def _reference_text(row: dict, tokenizer) -> str:
    return tokenizer.decode(row["labels"], skip_special_tokens=True).strip()


def _scores(model, collator, tokenizer, rows: list[dict], cfg: Config, options: dict) -> dict:
    """WER and CER of the model's transcripts of `rows`."""
    hypotheses = transcripts(model, collator, tokenizer, rows, cfg, options)
    references = [_reference_text(row, tokenizer) for row in rows]
    return error_rates(references, hypotheses, cfg.section(SECTION).normalizer)


def _reference_rows(cfg: Config, speech: SpeechFeatures) -> list[dict]:
    """eval.reference: transcribed clips of what the model should still recognize (the forgetting check)."""
    examples, problems = read_transcribed(cfg.eval.reference, cfg.data, cfg.section(SECTION))
    if problems:
        raise TunesmithError(f"eval.reference: {len(problems)} bad row(s)", [f"  {p}" for p in problems[:20]])
    return speech.prepare(examples[: cfg.eval.reference_max_examples])[0]


def write_samples(run: RunFolder, rows: list[dict], tuned: list[str], tokenizer, cfg: Config) -> None:
    """samples.jsonl: held-out clips with their reference, the base model's and the tuned model's transcripts,
    worst-transcribed (by the tuned model's WER) first."""
    base_file = run.path / "samples_base.json"
    base = json.loads(base_file.read_text())["outputs"] if base_file.exists() else [None] * len(rows)
    normalizer = cfg.section(SECTION).normalizer
    records = []
    for row, before, after in zip(rows, base, tuned, strict=True):
        reference = _reference_text(row, tokenizer)
        records.append(
            {
                "where": row["where"],
                "prompt": row["path"],
                "reference": reference,
                "base": before,
                "tuned": after,
                "wer_base": None if before is None else example_wer(reference, before, normalizer),
                "wer_tuned": example_wer(reference, after, normalizer),
            }
        )
    records.sort(key=lambda r: -(r["wer_tuned"] or 0.0))
    if is_main():
        with run.samples.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")


class ReferenceClips:
    """The forgetting check of a speech model: its WER on eval.reference (transcribed clips it should still
    recognize), before and after fine-tuning."""

    def __init__(self, cfg: Config, data: Prepared):
        self.cfg, self.data = cfg, data
        self.rows = _reference_rows(cfg, data.extras["speech"])

    def score(self, model) -> dict:
        e = self.data.extras
        return _scores(model, e["collator"], e["tokenizer"], self.rows, self.cfg, e["options"])

    def describe(self, score: dict) -> str:
        return f"reference WER {_rate(score['wer'])} ({len(self.rows)} clips)"

    def drift(self, before: dict, after: dict, cfg: Config) -> dict:
        return drift(before, after, cfg.eval.forgetting_threshold, "wer") | {"reference": cfg.eval.reference}

    def describe_drift(self, change: dict) -> str:
        return describe_drift(change, self.cfg.eval.reference)


class SpeechRecognitionTask(Task):
    name = "speech-recognition"
    summary = "audio in, transcript out: fine-tune a Whisper-style model to an accent, a vocabulary, a domain"
    starter = "speech-recognition"
    provides = frozenset()
    default_overflow = "drop"
    verbs = frozenset({"predict"})
    pipeline_tag = "automatic-speech-recognition"
    table_fields = frozenset({"audio", "text"})
    folder_suffixes = frozenset(AUDIO_SUFFIXES)
    folder_needs = frozenset({".txt"})  # each clip's transcript beside it
    auto_class = AUTO_CLASS
    sweep_metrics = ("eval_loss", "eval_wer", "eval_cer")

    def config_problems(self, cfg: Config) -> list[str]:
        problems = []
        if cfg.data.on_overflow not in ("auto", "drop", "truncate"):
            problems.append(
                f"data.on_overflow: {cfg.data.on_overflow} is not for speech; use drop or truncate (clips longer "
                "than the model's window, transcripts longer than speech.max_target_length)"
            )
        if cfg.data.packing:
            problems.append("data.packing is not for speech; clips are padded per batch")
        problems += classifier_settings_problems(cfg)
        metric = cfg.train.metric.removeprefix("eval_")
        if metric in ("wer", "cer") and cfg.train.greater_is_better is not False:
            problems.append(
                f"train.metric: {metric} is better when lower; set train.greater_is_better: false"
            )
        swept = (cfg.sweep.metric or cfg.train.metric).removeprefix("eval_") if cfg.sweep else None
        if swept in ("wer", "cer") and cfg.sweep.direction != "minimize":
            problems.append(f"sweep.direction: {swept} is better when lower; set sweep.direction: minimize")
        if metric in ("wer", "cer") and cfg.eval.train_generations == 0:
            problems.append(
                f"train.metric: {metric} needs eval.train_generations > 0 (clips transcribed per evaluation)"
            )
        return problems

    def validated_data(self, cfg: Config):
        return stop_on_bad_rows(check_speech(cfg.data, cfg.section(SECTION)), cfg.data)

    # -- the pipeline's hooks (tasks/pipeline.py) ------------------------------------------------------------
    def prepare(self, cfg: Config, checked, model_path: str, cache_dir) -> Prepared:
        from transformers import AutoConfig

        extractor, tokenizer = load_processor(model_path, cfg)
        positions = AutoConfig.from_pretrained(model_path, revision=cfg.model.revision).max_target_positions
        longest = min(cfg.section(SECTION).max_target_length, positions)
        speech = SpeechFeatures(extractor, tokenizer, longest, cfg.data.on_overflow)
        prepared = {name: speech.prepare(getattr(checked, name)) for name in ("train", "validation", "test")}
        with_clips = {name: counts for name, (_, counts) in prepared.items() if counts["seconds"]}
        report = checked.report | {"preprocessing": with_clips}
        if not prepared["train"][0]:
            raise TunesmithError(
                f"{cfg.data.train_file}: no training clips left; see the data report {with_clips}"
            )
        rows = {name: rows for name, (rows, _) in prepared.items()}
        extras = {"extractor": extractor, "tokenizer": tokenizer, "speech": speech, "cfg": cfg}
        return Prepared(rows["train"], rows["validation"], rows["test"], report, None, extras)

    def print_data_summary(self, report: dict) -> None:
        print_data_summary(report)

    def build_model(self, cfg: Config, model_path: str, method, data: Prepared):
        settings = cfg.section(SECTION)
        model = load_model(model_path, cfg.model, None, AUTO_CLASS)
        data.extras["spec_augment"] = set_spec_augment(model, settings.spec_augment)
        model = method.apply(model, cfg.method)
        data.extras["frozen"] = freeze_encoder(model) if settings.freeze_encoder else 0
        if data.extras["frozen"]:
            say(f"speech.freeze_encoder: {data.extras['frozen']:,} encoder parameters frozen")
        return model

    def build_trainer(self, cfg, run, model, data: Prepared, precision, callbacks, resuming, checkpointing):
        extras = data.extras
        extras["collator"] = SpeechCollator(extras["speech"], model.config.decoder_start_token_id)
        settings = cfg.section(SECTION)
        extras["options"] = generation_arguments(model, settings.language, settings.task)
        return set_up_trainer(
            SpeechTrainer, cfg, run, model, extras["collator"], data.train, data.validation, precision, callbacks,
            resuming, checkpointing, tokenizer=extras["tokenizer"], generations=cfg.eval.train_generations,
            options=extras["options"], settings=settings,
        )  # fmt: skip

    def summary_fields(self, cfg: Config, data: Prepared) -> dict:
        extras = data.extras
        speech = {"spec_augment": extras["spec_augment"], "generate": extras["options"]}
        normalizer = cfg.section(SECTION).normalizer  # what samples.jsonl's per-clip WERs were computed on
        return {"speech": speech | {"encoder_frozen": bool(extras["frozen"]), "normalizer": normalizer}}

    def forgetting_probe(self, cfg: Config, model_path: str, data: Prepared):
        return ReferenceClips(cfg, data) if cfg.eval.reference else None

    def samples(self, cfg: Config, data: Prepared) -> list:
        return (data.test or data.validation)[: cfg.eval.generations]

    def generate(self, model, data: Prepared, samples: list) -> list[str]:
        e = data.extras
        return transcripts(model, e["collator"], e["tokenizer"], samples, e["cfg"], e["options"])

    def write_samples(self, run: RunFolder, data: Prepared, samples: list, tuned: list[str]) -> None:
        write_samples(run, samples, tuned, data.extras["tokenizer"], data.extras["cfg"])

    def save(self, run: RunFolder, trainer, data: Prepared) -> None:
        trainer.save_model(str(run.model_dir))
        if is_main():
            data.extras["extractor"].save_pretrained(str(run.model_dir))
            data.extras["tokenizer"].save_pretrained(str(run.model_dir))

    def validation_scores(self, trainer, model, data: Prepared, final: dict) -> dict:
        return {
            k.removeprefix("eval_"): final[k] for k in ("eval_loss", "eval_wer", "eval_cer") if k in final
        }

    def score(self, model, data: Prepared, split: str) -> dict:
        e = data.extras
        return _scores(model, e["collator"], e["tokenizer"], getattr(data, split), e["cfg"], e["options"])

    def describe_scores(self, scores: dict, before: dict | None) -> str:
        if "examples" not in scores:  # validation: the Trainer's loss, WER and CER
            return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
        line = (
            f"WER {_rate(scores['wer'])}, CER {_rate(scores['cer'])} on {scores.get('examples', '?')} clips"
        )
        return line + (f" (before: WER {_rate(before['wer'])})" if before else "")

    def routes(self):
        from tunesmith.tasks.speech_recognition import routes

        return routes

    def load_run(self, run: RunFolder, adapter_name: str = "default", into=None):
        return speech_recognition_run.Transcriber(run)

    def predict(self, run: RunFolder, source, output, batch_size: int) -> dict:
        return speech_recognition_run.predict(run, source, output, batch_size)

    def evaluate(self, run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
        return speech_recognition_run.evaluate(run, data, baseline, generations)

    def report_figures(self, cfg: Config, data_report: dict, records: list[dict], evaluation) -> dict:
        from tunesmith.report import plots

        return {"plot-metrics": plots.evaluation_metrics(records, ["wer", "cer"])}

    def intended_use(self) -> str:
        return (
            "transcribing speech like the training clips (same language, accents, vocabulary and recording)."
        )

    def exportable(self, run: RunFolder):
        return speech_recognition_run.exportable(run)


register_section(SECTION, SpeechConfig, moved_from=("data.audio_field", "data.max_target_length"))
SPEECH_RECOGNITION = register_task(SpeechRecognitionTask())
