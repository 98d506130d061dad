"""The speech-recognition recipe (Whisper: audio in, transcript out), read top to bottom; speech_recognition_run.py
holds the finished run (transcribing, `tunesmith predict`, `tunesmith eval`, export)."""

from __future__ import annotations

import json
import time

from transformers import set_seed

from tunesmith.config import Config
from tunesmith.console import is_main, say, world_size
from tunesmith.data.media import AUDIO_SUFFIXES
from tunesmith.data.speech import SpeechCollator, SpeechFeatures, check_speech, read_transcribed
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.forgetting import describe as describe_drift
from tunesmith.evaluation.forgetting import drift
from tunesmith.evaluation.speech import error_rates, example_wer, generation_arguments
from tunesmith.methods import count_parameters
from tunesmith.models.loading import default_cache_dir, load_model, resolve_model
from tunesmith.registry import get_method, register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import defaults
from tunesmith.tasks.base import Task
from tunesmith.tasks.common import evaluation_of_final_weights, finish_run, resume_point, training_result
from tunesmith.training.hardware import describe_hardware, library_versions, pick_precision
from tunesmith.training.loop import fit, stop_message
from tunesmith.training.speech_loop import build_speech_trainer

AUTO_CLASS = "AutoModelForSpeechSeq2Seq"


def load_processor(model_path: str, cfg: Config):
    """The model's feature extractor and tokenizer; multilingual Whisper's tokenizer gets the language and task
    tokens every transcript starts with (<|startoftranscript|><|en|><|transcribe|><|notimestamps|>)."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    try:
        extractor = AutoFeatureExtractor.from_pretrained(model_path, revision=cfg.model.revision)
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg.model.revision)
    except (OSError, ValueError) as exc:
        raise TunesmithError(
            f"model.name: {model_path} has no feature extractor and tokenizer ({exc.__class__.__name__}); save "
            "them next to the weights (WhisperProcessor.save_pretrained(folder))"
        ) from None
    if not hasattr(extractor, "n_samples"):
        raise TunesmithError(
            f"model.name: {model_path}'s feature extractor ({type(extractor).__name__}) is not Whisper's; "
            "speech-recognition trains Whisper-style encoder-decoder models (CTC models are not supported yet)"
        )
    if hasattr(tokenizer, "set_prefix_tokens"):
        if cfg.speech.language and "<|startoftranscript|>" not in tokenizer.get_vocab():
            raise TunesmithError(
                f"speech.language: {model_path}'s tokenizer has no language tokens; unset it"
            )
        tokenizer.set_prefix_tokens(
            language=cfg.speech.language, task=cfg.speech.task, predict_timestamps=False
        )
    return extractor, tokenizer


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
                f"{counts['max_label_tokens']} tokens were {counts['action']} (data.max_target_length)"
            )


def transcripts(model, collator, tokenizer, rows: list[dict], cfg: Config, options: dict) -> list[str]:
    from tunesmith.evaluation.speech import transcribe

    size, speech = cfg.eval.batch_size, collator.speech
    texts = []
    for start in range(0, len(rows), size):
        features = speech.features([speech.load(row["path"]) for row in rows[start : start + size]])
        texts += transcribe(model, features, tokenizer, cfg.speech.max_new_tokens, options)
    return texts


def train(cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
    started = time.time()
    checked = SPEECH_RECOGNITION.validated_data(cfg)
    cache_dir = default_cache_dir(cfg.output.cache_dir)
    model_path = resolve_model(cfg.model, cache_dir)  # a missing model fails before a run folder exists
    extractor, tokenizer = load_processor(model_path, cfg)
    run = RunFolder.for_training(cfg, default_name, resume)
    say(f"run folder: {run.path}")
    run.save_config(cfg)

    method = get_method(cfg.method.name)
    set_seed(cfg.train.seed)  # adapter initialisation is random
    model = load_model(model_path, cfg.model, None, AUTO_CLASS)
    spec_augment = set_spec_augment(model, cfg.speech.spec_augment)
    max_labels = min(cfg.data.max_target_length, model.config.max_target_positions)
    speech = SpeechFeatures(extractor, tokenizer, max_labels, cfg.data.on_overflow)
    prepared = {
        name: speech.prepare(examples)
        for name, examples in (
            ("train", checked.train),
            ("validation", checked.validation),
            ("test", checked.test),
        )
    }
    train_rows, validation_rows, test_rows = (prepared[name][0] for name in ("train", "validation", "test"))
    with_clips = {name: counts for name, (_, counts) in prepared.items() if counts["seconds"]}
    report = checked.report | {"preprocessing": with_clips}
    run.write_json(run.data_report, report)
    print_data_summary(report)
    if not train_rows:
        raise TunesmithError(f"{cfg.data.train_file}: no training clips left; see {run.data_report}")

    model = method.apply(model, cfg.method)
    frozen = freeze_encoder(model) if cfg.speech.freeze_encoder else 0
    parameters = count_parameters(model)
    say(
        f"method {method.name}{' (encoder frozen)' if frozen else ''}: {parameters['trainable']:,} trainable of "
        f"{parameters['total']:,} parameters ({parameters['trainable_percent']}%)"
    )
    run_cfg, choices = defaults.choose(cfg, len(train_rows), bool(validation_rows), defaults.GENERATOR)
    defaults.announce(choices)
    precision = pick_precision(cfg.train.precision, model.dtype)
    resume_from = resume_point(run) if resume else None
    collator = SpeechCollator(speech, model.config.decoder_start_token_id)
    options = generation_arguments(model, cfg.speech.language, cfg.speech.task)
    trainer, counter = build_speech_trainer(
        run_cfg,
        run,
        model,
        tokenizer,
        collator,
        train_rows,
        validation_rows,
        options,
        precision,
        callbacks,
        resume,
    )
    summary = run.update_summary(
        status="running",
        task=cfg.task,
        base_model=cfg.model.name,
        base_model_path=model_path,
        method=method.name,
        is_adapter=method.is_adapter,
        parameters=parameters,
        precision=precision,
        speech={"spec_augment": spec_augment, "generate": options, "encoder_frozen": bool(frozen)},
        processes=world_size(),
        defaults=defaults.record(choices),
        hardware=describe_hardware(),
        versions=library_versions(),
    )
    # Transcribed before and after training, shown worst first in report.html (from the test split when there is
    # one: nothing was chosen on it).
    samples = (test_rows or validation_rows)[: cfg.eval.generations] if is_main() else []
    if samples and not resume:
        base = transcripts(model, collator, tokenizer, samples, cfg, options)
        run.write_json(run.path / "samples_base.json", {"outputs": base})
    reference = _reference_rows(cfg, speech) if cfg.eval.reference else []
    if reference and summary.reference_before is None:
        before = _scores(model, collator, tokenizer, reference, cfg, options)
        summary = run.update_summary(reference_before=before)
        say(
            f"forgetting check: reference WER before training {_rate(before['wer'])} ({len(reference)} clips)"
        )
    if test_rows and cfg.eval.before_training and summary.test_before is None:
        summary = run.update_summary(test_before=_scores(model, collator, tokenizer, test_rows, cfg, options))

    set_seed(cfg.train.seed)
    output, stopped = fit(trainer, resume_from)
    seconds = counter.seconds  # training steps only: evaluations and checkpoint writes are left out
    if stopped:
        say(stop_message(trainer))
        run.update_summary(status="stopped", global_step=trainer.state.global_step)
        return finish_run(run, cfg, run.read_summary(), SPEECH_RECOGNITION)

    trainer.save_model(str(run.model_dir))
    if is_main():
        extractor.save_pretrained(str(run.model_dir))
        tokenizer.save_pretrained(str(run.model_dir))
    result = training_result(trainer, output, counter, seconds)
    if validation_rows:
        final = evaluation_of_final_weights(trainer) or trainer.evaluate()
        result["validation_loss_after"] = final["eval_loss"]
        result["validation"] = {
            k.removeprefix("eval_"): final[k] for k in ("eval_loss", "eval_wer", "eval_cer") if k in final
        }
        say(
            "validation after training: " + ", ".join(f"{k} {v:.4f}" for k, v in result["validation"].items())
        )
    if test_rows:
        result["test"] = _scores(model, collator, tokenizer, test_rows, cfg, options)
        say(
            f"test: WER {_rate(result['test']['wer'])}, CER {_rate(result['test']['cer'])} on {len(test_rows)} "
            "clips (held out: no checkpoint or setting was chosen on them)"
        )
    if samples:
        write_samples(
            run, samples, transcripts(model, collator, tokenizer, samples, cfg, options), tokenizer, cfg
        )
    if reference:
        after = _scores(model, collator, tokenizer, reference, cfg, options)
        result["forgetting"] = drift(
            run.read_summary().reference_before, after, cfg.eval.forgetting_threshold, "wer"
        )
        result["forgetting"]["reference"] = cfg.eval.reference
        say(describe_drift(result["forgetting"], cfg.eval.reference))
    result["wall_seconds"] = round(time.time() - started, 1)
    run.update_summary(**result)
    return finish_run(run, cfg, run.read_summary(), SPEECH_RECOGNITION)


def _rate(value: float | None) -> str:
    """A WER or CER as printed; None when no reference had words left after normalization."""
    return "n/a (no reference words)" if value is None else f"{value:.4f}"


def _reference_text(row: dict, tokenizer) -> str:
    return tokenizer.decode(row["labels"], skip_special_tokens=True).strip()


def _scores(model, collator, tokenizer, rows: list[dict], cfg: Config, options: dict) -> dict:
    """WER and CER of the model's transcripts of `rows`."""
    hypotheses = transcripts(model, collator, tokenizer, rows, cfg, options)
    references = [_reference_text(row, tokenizer) for row in rows]
    return error_rates(references, hypotheses, cfg.speech.normalizer)


def _reference_rows(cfg: Config, speech: SpeechFeatures) -> list[dict]:
    """eval.reference: transcribed clips of what the model should still recognize (the forgetting check)."""
    examples, problems = read_transcribed(cfg.eval.reference, cfg.data)
    if problems:
        raise TunesmithError(f"eval.reference: {len(problems)} bad row(s)", [f"  {p}" for p in problems[:20]])
    return speech.prepare(examples[: cfg.eval.reference_max_examples])[0]


def write_samples(run: RunFolder, rows: list[dict], tuned: list[str], tokenizer, cfg: Config) -> None:
    """samples.jsonl: held-out clips with their reference, the base model's and the tuned model's transcripts,
    worst-transcribed (by the tuned model's WER) first."""
    base_file = run.path / "samples_base.json"
    base = json.loads(base_file.read_text())["outputs"] if base_file.exists() else [None] * len(rows)
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
                "wer_base": None if before is None else example_wer(reference, before, cfg.speech.normalizer),
                "wer_tuned": example_wer(reference, after, cfg.speech.normalizer),
            }
        )
    records.sort(key=lambda r: -(r["wer_tuned"] or 0.0))
    if is_main():
        with run.samples.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")


class SpeechRecognitionTask(Task):
    name = "speech-recognition"
    summary = "audio in, transcript out: fine-tune a Whisper-style model to an accent, a vocabulary, a domain"
    starter = "speech-recognition"
    provides = frozenset()
    default_overflow = "drop"
    verbs = frozenset({"predict"})
    route_group = "transcription"
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
                "than the model's window, transcripts longer than data.max_target_length)"
            )
        if cfg.data.packing or cfg.data.multi_label or cfg.train.class_weights or cfg.train.layer_lr_decay:
            problems.append(
                "data.packing, data.multi_label, train.class_weights and train.layer_lr_decay are not for speech"
            )
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

    def check_data(self, data):
        return check_speech(data)

    def train(self, cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
        return train(cfg, default_name, resume, callbacks)

    def load_run(self, run: RunFolder, adapter_name: str = "default", into=None):
        from tunesmith.tasks.speech_recognition_run import Transcriber

        return Transcriber(run)

    def predict(self, run: RunFolder, source, output, batch_size: int) -> dict:
        from tunesmith.tasks import speech_recognition_run

        return speech_recognition_run.predict(run, source, output, batch_size)

    def evaluate(self, run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
        from tunesmith.tasks import speech_recognition_run

        return speech_recognition_run.evaluate(run, data, baseline, generations)

    def final_metric(self, summary, name: str) -> float | None:
        return (summary.validation or {}).get(name.removeprefix("eval_"))

    def report_figures(self, cfg: Config, data_report: dict, records: list[dict], evaluation) -> dict:
        from tunesmith.report import plots

        return {"plot-metrics": plots.evaluation_metrics(records, ["wer", "cer"])}

    def intended_use(self) -> str:
        return (
            "transcribing speech like the training clips (same language, accents, vocabulary and recording)."
        )

    def exportable(self, run: RunFolder):
        from tunesmith.tasks import speech_recognition_run

        return speech_recognition_run.exportable(run)


SPEECH_RECOGNITION = register_task(SpeechRecognitionTask())
