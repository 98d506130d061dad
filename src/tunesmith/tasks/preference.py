"""The preference-tuning recipe (DPO, IPO, ORPO, SimPO, KTO) for causal language models, read top to bottom."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from transformers import set_seed

from tunesmith.config import Config
from tunesmith.console import is_main, say, world_size
from tunesmith.data.collate import pad_token_id
from tunesmith.data.preference import (
    PreferenceCollator,
    UnpairedCollator,
    check_preference_data,
    longest,
    tokenize_preference,
)
from tunesmith.data.prepare import tokenizer_fingerprint
from tunesmith.data.templates import Renderer
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.forgetting import Reference, drift, read_reference_texts
from tunesmith.evaluation.forgetting import describe as describe_drift
from tunesmith.evaluation.generation import generate
from tunesmith.evaluation.preference import score_pairs
from tunesmith.methods import count_parameters, get_method
from tunesmith.models.loading import default_cache_dir, load_model, load_tokenizer, resolve_model
from tunesmith.registry import register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import causal_lm_run, preference_run
from tunesmith.tasks.base import Task
from tunesmith.tasks.causal_lm import write_samples
from tunesmith.tasks.common import decide_checkpointing, finish_run, resume_point, training_result
from tunesmith.training.hardware import describe_hardware, library_versions, pick_precision
from tunesmith.training.loop import (
    fit,
    point_trackers_at,
    quiet,
    standard_callbacks,
    stop_message,
    training_arguments,
)
from tunesmith.training.preference_losses import NEEDS_REFERENCE
from tunesmith.training.preference_trainer import PreferenceTrainer, precompute_reference

REFERENCE_CACHE_VERSION = "1"


def tokenize(checked, cfg: Config, renderer: Renderer) -> tuple[list[dict], list[dict], list[dict], dict]:
    """Every split tokenized; over-length pairs dropped whole and counted in the report."""
    train, train_report = tokenize_preference(checked.train, renderer, cfg.data.max_length, "train")
    validation, validation_report = tokenize_preference(
        checked.validation, renderer, cfg.data.max_length, "validation"
    )
    test, test_report = tokenize_preference(checked.test, renderer, cfg.data.max_length, "test")
    report = {**checked.report, **train_report, **validation_report, "template": renderer.kind}
    if checked.test:
        report |= test_report
    if not train:
        raise TunesmithError(
            f"{cfg.data.train_file}: every training pair is longer than data.max_length={cfg.data.max_length} "
            "(prompt plus its longer answer); raise max_length"
        )
    return train, validation, test, report


def print_data_summary(report: dict, loss: str) -> None:
    unit = "answers" if loss == "kto" else "pairs"
    test = f" / {report['test_pairs']} test" if "test_pairs" in report else ""
    say(
        f"data: {report['rows_read']} rows read, {report['bad_rows']} bad, {report.get('duplicates_removed', 0)} "
        f"duplicates removed; {report['train_pairs']} train / {report['validation_pairs']} validation{test} "
        f"{unit} ({report['format']})"
    )
    for split in ("train", "validation", "test"):
        if f"{split}_pairs" not in report:
            continue
        over = report[f"{split}_over_max_length"]
        if over["count"]:
            say(
                f"data: {over['count']} {split} {unit} longer than max_length={over['max_length']} were dropped whole"
            )
        for problem in report[f"{split}_template_problems"]:
            say(f"data: dropped {problem}")
        if report[f"{split}_answers_without_stop_token"]:
            say(
                f"data: warning: {report[f'{split}_answers_without_stop_token']} {split} {unit} have no end-of-answer "
                "token in their labels; the tuned model may not learn to stop"
            )


def reference_cache_key(items: list[dict], model_path: str, cfg: Config, renderer: Renderer) -> str:
    """Keyed like the tokenization cache (data, settings, tokenizer) plus the reference weights' identity."""
    digest = hashlib.sha256()
    settings = [
        REFERENCE_CACHE_VERSION,
        renderer.kind,
        cfg.data.max_length,
        cfg.model.dtype,
        cfg.preference.loss,
    ]
    digest.update(json.dumps(settings).encode())
    digest.update(tokenizer_fingerprint(renderer.tokenizer).encode())
    weights = Path(model_path)
    stamp = [str(weights.resolve())] + [
        f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in sorted(weights.glob("*.safetensors"))
    ]
    digest.update(json.dumps(stamp).encode())
    for item in items:
        digest.update(json.dumps([item[k] for k in sorted(item) if k.endswith("ids")]).encode())
    return digest.hexdigest()[:24]


def with_reference(items: list[dict], model, collator, batch_size: int, cache: Path | None) -> list[dict]:
    """preference.precompute_reference: the reference's log-probabilities added to each item, cached on disk."""
    if cache is not None and cache.exists():
        values = json.loads(cache.read_text())
        say(f"reference log-probabilities: {len(values)} from the cache")
    else:
        values = precompute_reference(model, items, collator, batch_size)
        if cache is not None and is_main():
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(values))
    return [{**item, **value} for item, value in zip(items, values, strict=True)]


def describe_reference(loss: str, adapter: bool, precomputed: bool) -> str:
    if not NEEDS_REFERENCE[loss]:
        return "none (the loss needs no reference model)"
    if precomputed:
        return "precomputed once before training" + (
            " (adapter off)" if adapter else " (the initial weights)"
        )
    return "the same weights with the adapter off" if adapter else "a frozen copy of the base"


def train(cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
    started = time.time()
    pref = cfg.preference
    if pref.split_backward and world_size() > 1:  # each chunk's backward would all-reduce partial gradients
        raise TunesmithError("preference.split_backward runs in one process: drop --nproc or set it to false")
    checked = PREFERENCE.validated_data(cfg)
    run = RunFolder.for_training(cfg, default_name, resume)
    say(f"run folder: {run.path}")
    run.save_config(cfg)
    cache_dir = default_cache_dir(cfg.output.cache_dir)

    model_path = resolve_model(cfg.model, cache_dir)
    tokenizer = load_tokenizer(model_path, cfg.model)
    renderer = Renderer(tokenizer, cfg.data.template)
    train_rows, validation_rows, test_rows, report = tokenize(checked, cfg, renderer)
    run.write_json(run.data_report, report)
    print_data_summary(report, pref.loss)

    method = get_method(cfg.method.name)
    set_seed(cfg.train.seed)  # adapter initialisation is random: seed it, or two identical configs differ
    model = method.apply(
        load_model(model_path, cfg.model, method.quantization_config(cfg.method)), cfg.method
    )
    parameters = count_parameters(model)
    say(
        f"method {method.name}: {parameters['trainable']:,} trainable of {parameters['total']:,} parameters "
        f"({parameters['trainable_percent']}%)"
    )
    pad_id = pad_token_id(tokenizer)
    collator = (UnpairedCollator if pref.loss == "kto" else PreferenceCollator)(pad_id)
    if pref.precompute_reference and NEEDS_REFERENCE[pref.loss]:
        for rows in filter(None, (train_rows, validation_rows, test_rows)):
            key = reference_cache_key(rows, model_path, cfg, renderer)
            cache = cache_dir / "reference" / f"{key}.json" if cache_dir else None
            rows[:] = with_reference(rows, model, collator, cfg.eval.batch_size, cache)
        examples = len(train_rows) + len(validation_rows) + len(test_rows)
        say(f"reference log-probabilities precomputed for {examples} examples")
    # A second copy of the base only where nothing else can stand in for it: full/last_n, live reference.
    needs_copy = NEEDS_REFERENCE[pref.loss] and not method.is_adapter and not pref.precompute_reference
    reference_model = load_model(model_path, cfg.model) if needs_copy else None
    reference = describe_reference(pref.loss, method.is_adapter, pref.precompute_reference)
    say(f"preference: {pref.loss}, beta {pref.beta}; reference: {reference}")

    precision = pick_precision(cfg.train.precision, model.dtype)
    # Chosen and rejected share one forward: a step holds twice as many rows as train.batch_size says (KTO's
    # mismatched rows run without gradients, so they keep no activations).
    rows_per_example = 1 if pref.loss == "kto" else 2
    step_rows = cfg.train.model_copy(update={"batch_size": rows_per_example * cfg.train.batch_size})
    checkpointing = decide_checkpointing(
        cfg.model_copy(update={"train": step_rows}), model, max(longest(r) for r in train_rows), precision
    )
    resume_from = resume_point(run) if resume else None
    trainer, counter = build_trainer(
        cfg, run, model, tokenizer, collator, train_rows, validation_rows, precision, callbacks,
        reference_model, resume, checkpointing["enabled"],
    )  # fmt: skip
    summary = run.update_summary(
        status="running",
        task=cfg.task,
        base_model=cfg.model.name,
        base_model_path=model_path,
        method=method.name,
        is_adapter=method.is_adapter,
        parameters=parameters,
        preference={"loss": pref.loss, "beta": pref.beta, "reference": reference},
        precision=precision,
        gradient_checkpointing=checkpointing,
        processes=world_size(),
        template=renderer.kind,
        stop_token_ids=renderer.stop_token_ids(),
        hardware=describe_hardware(),
        versions=library_versions(),
    )
    forgetting = Reference.load(cfg, renderer.encode_text) if cfg.eval.reference else None
    if forgetting is not None and summary.reference_before is None:  # a resumed run keeps its first score
        summary = run.update_summary(reference_before=forgetting.score(model, pad_id, cfg.eval.batch_size))
    paired_validation = validation_rows if pref.loss != "kto" else []
    if paired_validation and summary.pairs_before is None:
        with preference_run.base_weights(model, reference_model):
            before = score_pairs(reference_model or model, paired_validation, pad_id, cfg.eval.batch_size)
        summary = run.update_summary(pairs_before=before)
        say(preference_run.describe_pairs("before training", before))
    samples = preference_run.sample_prompts(checked.validation, cfg.eval.samples) if is_main() else []
    if samples and not resume:
        outputs = generate(model, renderer, [s[1] for s in samples], cfg.eval.max_new_tokens)
        run.write_json(run.path / "samples_base.json", {"outputs": outputs})

    set_seed(cfg.train.seed)  # as in causal_lm: every rank shuffles the data identically
    output, stopped = fit(trainer, resume_from)
    train_seconds = counter.seconds  # training steps only: evaluations and checkpoint writes are left out
    if stopped:
        say(stop_message(trainer))
        run.update_summary(status="stopped", global_step=trainer.state.global_step)
        return finish_run(run, cfg, run.read_summary(), PREFERENCE)

    trainer.save_model(str(run.model_dir))
    if is_main():
        tokenizer.save_pretrained(str(run.model_dir))
    result = training_result(trainer, output, counter, train_seconds)
    if validation_rows:
        result["validation"] = preference_run.final_evaluation(trainer)
        result["validation_loss_after"] = result["validation"]["eval_loss"]
    if paired_validation:
        result["pairs_after"] = score_pairs(model, paired_validation, pad_id, cfg.eval.batch_size)
        say(preference_run.describe_pairs("after training", result["pairs_after"]))
    if test_rows:
        result["test"] = preference_run.score_test(trainer, test_rows, pad_id, cfg.eval.batch_size)
        say(preference_run.describe_test(result["test"]))
    if samples:
        write_samples(
            run, samples, generate(model, renderer, [s[1] for s in samples], cfg.eval.max_new_tokens)
        )
    if forgetting is not None:
        after = forgetting.score(model, pad_id, cfg.eval.batch_size)
        result["forgetting"] = drift(summary.reference_before, after, cfg.eval.forgetting_threshold)
        result["forgetting"]["reference"] = forgetting.path
        say(describe_drift(result["forgetting"], forgetting.path))
    result["wall_seconds"] = round(time.time() - started, 1)
    run.update_summary(**result)
    return finish_run(run, cfg, run.read_summary(), PREFERENCE)


def build_trainer(
    cfg: Config,
    run: RunFolder,
    model,
    tokenizer,
    collator,
    train_rows: list[dict],
    validation_rows: list[dict],
    precision: str,
    extra_callbacks,
    reference_model,
    resuming: bool,
    gradient_checkpointing: bool,
) -> tuple[PreferenceTrainer, object]:
    """The Trainer as causal_lm builds it (arguments, callbacks, trackers), with the preference loss."""
    from tunesmith.training.callbacks import TokenCounter

    counter = TokenCounter(collator)
    callbacks = standard_callbacks(cfg, run, counter, extra_callbacks, bool(validation_rows))
    args = training_arguments(
        cfg, run, len(train_rows), bool(validation_rows), precision, resuming, None, gradient_checkpointing
    )
    point_trackers_at(run, cfg)
    model.config.use_cache = False
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_rows,
        eval_dataset=validation_rows or None,
        processing_class=tokenizer,
        callbacks=callbacks,
        preference=cfg.preference,
        reference_model=reference_model,
    )
    quiet(trainer)
    return trainer, counter


class PreferenceTask(Task):
    name = "preference"
    summary = "preference tuning of a language model on chosen/rejected answers (dpo, ipo, orpo, simpo, kto)"
    starter = "preference"
    provides = frozenset({"4-bit base"})
    default_overflow = "drop"
    verbs = frozenset({"generate", "merge"})
    route_group = "generation"
    pipeline_tag = "text-generation"
    table_fields = frozenset({"chosen", "rejected"})
    auto_class = "AutoModelForCausalLM"
    sweep_metrics = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")

    def config_problems(self, cfg: Config) -> list[str]:
        problems = []
        if cfg.train.class_weights or cfg.train.layer_lr_decay:
            problems.append("train.class_weights and train.layer_lr_decay are for classification tasks")
        if cfg.data.packing:
            problems.append("data.packing: preference pairs are not packed; set it to false")
        if cfg.data.on_overflow not in ("auto", "drop"):
            problems.append(
                f"data.on_overflow: {cfg.data.on_overflow} would cut one answer of a pair; preference data drops "
                "over-length pairs whole (drop)"
            )
        if cfg.data.loss_on != "response":
            problems.append("data.loss_on: preference losses score the answers only; leave it at response")
        if cfg.preference.split_backward and cfg.preference.loss not in ("dpo", "ipo", "simpo"):
            problems.append(
                f"preference.split_backward: {cfg.preference.loss}'s loss reads more than each answer's summed "
                "log-probability; it works with dpo, ipo and simpo: set it to false"
            )
        if cfg.preference.sft_weight and cfg.preference.loss not in ("dpo", "ipo", "simpo"):
            problems.append(
                f"preference.sft_weight: the chosen-answer NLL term is added to dpo, ipo and simpo; "
                f"{cfg.preference.loss} has its own (orpo always includes one) or none: set it to 0"
            )
        return problems

    def check_data(self, data, preference=None):
        from tunesmith.config import PreferenceConfig

        return check_preference_data(data, preference or PreferenceConfig())

    def validated_data(self, cfg: Config):
        from tunesmith.tasks.common import bad_rows_error

        checked = check_preference_data(cfg.data, cfg.preference)
        if checked.problems and cfg.data.on_error == "stop":
            raise bad_rows_error(checked)
        if cfg.eval.reference:  # a bad reference file fails now, not after the model is loaded
            read_reference_texts(
                cfg.eval.reference, cfg.eval.reference_field, cfg.eval.reference_max_examples
            )
        return checked

    def train(self, cfg: Config, default_name: str = "run", resume: bool = False, callbacks=()) -> dict:
        return train(cfg, default_name, resume, callbacks)

    def load_run(self, run: RunFolder, adapter_name: str = "default", into=None):
        return causal_lm_run.load_run(
            run, adapter_name, into
        )  # the tuned model is a causal LM like any other

    def evaluate(self, run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
        return preference_run.evaluate(run, data, baseline, generations)

    def final_metric(self, summary, name: str) -> float | None:
        return (summary.validation or {}).get(name if name.startswith("eval_") else f"eval_{name}")

    def report_figures(self, cfg: Config, data_report: dict, records: list[dict], evaluation) -> dict:
        from tunesmith.report import plots

        names = ["rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"]
        return {"plot-metrics": plots.evaluation_metrics(records, names)}

    def intended_use(self) -> str:
        return "answering prompts in the style its preference data favoured (chat template or prompt format in the config)."

    def exportable(self, run: RunFolder):
        return preference_run.exportable(run, self.auto_class)


PREFERENCE = register_task(PreferenceTask())
