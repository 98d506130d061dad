"""preference: a causal language model tuned on chosen/rejected answers (DPO, IPO, ORPO, SimPO, KTO).

Everything this task needs lives in this package: its config section (settings.py), its data (data.py), its losses
(losses/, one module each, registered by name), its Trainer (trainer.py), answer log-probabilities and preference
accuracy (scoring.py) and its finished runs (run.py). It trains through the one pipeline (tasks/pipeline.py) and is
registered by the last lines below.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunesmith.config import Config
from tunesmith.console import is_main, say, world_size
from tunesmith.data.collate import pad_token_id
from tunesmith.data.prepare import tokenizer_fingerprint
from tunesmith.data.templates import Renderer
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.forgetting import read_reference_texts
from tunesmith.evaluation.generation import generate
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.registry import register_section, register_task
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import generator
from tunesmith.tasks.base import Task
from tunesmith.tasks.common import (
    ReferencePerplexity,
    classifier_settings_problems,
    stop_on_bad_rows,
    write_conversation_samples,
)
from tunesmith.tasks.pipeline import Prepared
from tunesmith.tasks.preference import losses
from tunesmith.tasks.preference import run as preference_run
from tunesmith.tasks.preference.data import (
    PreferenceCollator,
    UnpairedCollator,
    check_preference_data,
    longest,
    tokenize_preference,
)
from tunesmith.tasks.preference.scoring import score_pairs
from tunesmith.tasks.preference.settings import SECTION, PreferenceConfig
from tunesmith.tasks.preference.trainer import PreferenceTrainer, precompute_reference
from tunesmith.training.loop import set_up_trainer

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
    unit = "pairs" if losses.get_loss(loss).paired else "answers"
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
        cfg.section(SECTION).loss,
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


def listed(where) -> str:
    """The registered losses for which `where` holds, as words: 'dpo, ipo and simpo'."""
    names = losses.names(where)
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def describe_reference(loss: str, adapter: bool, precomputed: bool) -> str:
    if not losses.get_loss(loss).reference:
        return "none (the loss needs no reference model)"
    if precomputed:
        return "precomputed once before training" + (
            " (adapter off)" if adapter else " (the initial weights)"
        )
    return "the same weights with the adapter off" if adapter else "a frozen copy of the base"


class PreferenceTask(Task):
    name = "preference"
    summary = f"preference tuning of a language model on chosen/rejected answers ({', '.join(losses.LOSSES)})"
    starter = "preference"
    provides = frozenset({"4-bit base"})
    no_replay = (
        "a preference row needs a chosen and a rejected answer, and replay as a likelihood term on general "
        "text is not built for preference losses yet (tune with causal-lm and data.replay first)"
    )
    default_overflow = "drop"
    verbs = frozenset({"generate", "merge"})
    pipeline_tag = "text-generation"
    table_fields = frozenset({"chosen", "rejected"})
    auto_class = "AutoModelForCausalLM"
    sweep_metrics = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")

    def config_problems(self, cfg: Config) -> list[str]:
        problems = classifier_settings_problems(cfg)
        if cfg.data.packing:
            problems.append("data.packing: preference pairs are not packed; set it to false")
        if cfg.data.on_overflow not in ("auto", "drop"):
            problems.append(
                f"data.on_overflow: {cfg.data.on_overflow} would cut one answer of a pair; preference data drops "
                "over-length pairs whole (drop)"
            )
        if cfg.data.loss_on != "response":
            problems.append("data.loss_on: preference losses score the answers only; leave it at response")
        pref = cfg.section(SECTION)
        loss = losses.get_loss(pref.loss)
        if pref.split_backward and not loss.splits_backward:
            problems.append(
                f"preference.split_backward: {pref.loss}'s loss reads more than each answer's summed "
                f"log-probability; it works with {listed(lambda s: s.splits_backward)}: set it to false"
            )
        if pref.sft_weight and "sft_weight" not in loss.reads:
            problems.append(
                f"preference.sft_weight: the chosen-answer NLL term is added to "
                f"{listed(lambda s: 'sft_weight' in s.reads)}; {pref.loss} has its own (orpo always includes one) "
                "or none: set it to 0"
            )
        return problems

    def check_data(self, data):
        """The data with the section's default field names and loss (validated_data reads the run's own)."""
        return check_preference_data(data, PreferenceConfig())

    def validated_data(self, cfg: Config):
        checked = stop_on_bad_rows(check_preference_data(cfg.data, cfg.section(SECTION)), cfg.data)
        if cfg.eval.reference:  # a bad reference file fails now, not after the model is loaded
            read_reference_texts(
                cfg.eval.reference, cfg.eval.reference_field, cfg.eval.reference_max_examples
            )
        return checked

    # -- the pipeline's hooks (tasks/pipeline.py) ------------------------------------------------------------
    chooses_defaults = (
        False  # the schema's settings as written: no run-time schedule was measured for DPO & co.
    )
    scores_test_before = False  # the test split is scored once, by the final weights

    def prepare(self, cfg: Config, checked, model_path: str, cache_dir) -> Prepared:
        pref = cfg.section(SECTION)
        if pref.split_backward and world_size() > 1:  # each chunk's backward would all-reduce partials
            raise TunesmithError(
                "preference.split_backward runs in one process: drop --nproc or set it to false"
            )
        tokenizer = load_tokenizer(model_path, cfg.model)
        renderer = Renderer(tokenizer, cfg.data.template)
        train_rows, validation_rows, test_rows, report = tokenize(checked, cfg, renderer)
        report["loss"] = pref.loss
        extras = {"tokenizer": tokenizer, "renderer": renderer, "checked": checked, "cfg": cfg}
        extras |= {"cache_dir": cache_dir, "model_path": model_path}
        lengths = [longest(row) for row in train_rows]
        # Chosen and rejected share one forward: a step holds twice as many rows as train.batch_size says (KTO's
        # mismatched rows run without gradients, so they keep no activations).
        rows_per_example = 2 if losses.get_loss(pref.loss).paired else 1
        return Prepared(train_rows, validation_rows, test_rows, report, lengths, extras, rows_per_example)

    def print_data_summary(self, report: dict) -> None:
        print_data_summary(report, report["loss"])

    def build_model(self, cfg: Config, model_path: str, method, data: Prepared):
        pref, e = cfg.section(SECTION), data.extras
        loss = losses.get_loss(pref.loss)
        model = method.apply(
            load_model(model_path, cfg.model, method.quantization_config(cfg.method)), cfg.method
        )
        e["collator"] = (PreferenceCollator if loss.paired else UnpairedCollator)(
            pad_token_id(e["tokenizer"])
        )
        if pref.precompute_reference and loss.reference:
            for rows in filter(None, (data.train, data.validation, data.test)):
                key = reference_cache_key(rows, model_path, cfg, e["renderer"])
                cache = e["cache_dir"] / "reference" / f"{key}.json" if e["cache_dir"] else None
                rows[:] = with_reference(rows, model, e["collator"], cfg.eval.batch_size, cache)
            examples = len(data.train) + len(data.validation) + len(data.test)
            say(f"reference log-probabilities precomputed for {examples} examples")
        # A second copy of the base only where nothing else can stand in for it: full/last_n, live reference.
        needs_copy = loss.reference and not method.is_adapter and not pref.precompute_reference
        e["reference_model"] = load_model(model_path, cfg.model) if needs_copy else None
        e["reference"] = describe_reference(pref.loss, method.is_adapter, pref.precompute_reference)
        say(f"preference: {pref.loss}, beta {pref.beta}; reference: {e['reference']}")
        return model

    def build_trainer(self, cfg, run, model, data: Prepared, precision, callbacks, resuming, checkpointing):
        e = data.extras
        e["trainer"], counter = set_up_trainer(
            PreferenceTrainer, cfg, run, model, e["collator"], data.train, data.validation, precision, callbacks,
            resuming, checkpointing, processing_class=e["tokenizer"], preference=cfg.section(SECTION),
            reference_model=e["reference_model"],
        )  # fmt: skip
        return e["trainer"], counter

    def summary_fields(self, cfg: Config, data: Prepared) -> dict:
        pref, renderer = cfg.section(SECTION), data.extras["renderer"]
        return {
            "preference": {"loss": pref.loss, "beta": pref.beta, "reference": data.extras["reference"]},
            "template": renderer.kind,
            "stop_token_ids": renderer.stop_token_ids(),
        }

    def forgetting_probe(self, cfg: Config, model_path: str, data: Prepared):
        return ReferencePerplexity(cfg, data.extras) if cfg.eval.reference else None

    def paired_validation(self, data: Prepared) -> list:
        return data.validation if losses.get_loss(data.extras["cfg"].section(SECTION).loss).paired else []

    def before_training(self, run: RunFolder, model, data: Prepared, summary) -> None:
        """The held-out pairs scored by the base: is the chosen answer already the likelier one?"""
        pairs, e = self.paired_validation(data), data.extras
        if pairs and summary.pairs_before is None:
            with preference_run.base_weights(model, e["reference_model"]):
                before = score_pairs(
                    e["reference_model"] or model,
                    pairs,
                    pad_token_id(e["tokenizer"]),
                    e["cfg"].eval.batch_size,
                )
            run.update_summary(pairs_before=before)
            say(preference_run.describe_pairs("before training", before))

    def after_training(self, run: RunFolder, model, data: Prepared, result: dict) -> None:
        pairs, e = self.paired_validation(data), data.extras
        if pairs:
            result["pairs_after"] = score_pairs(
                model, pairs, pad_token_id(e["tokenizer"]), e["cfg"].eval.batch_size
            )
            say(preference_run.describe_pairs("after training", result["pairs_after"]))

    def samples(self, cfg: Config, data: Prepared) -> list:
        return preference_run.sample_prompts(data.extras["checked"].validation, cfg.eval.samples)

    def generate(self, model, data: Prepared, samples: list) -> list[str]:
        tokens = data.extras["cfg"].eval.max_new_tokens
        return generate(model, data.extras["renderer"], [s[1] for s in samples], tokens)

    def write_samples(self, run: RunFolder, data: Prepared, samples: list, tuned: list[str]) -> None:
        write_conversation_samples(run, samples, tuned)

    def save(self, run: RunFolder, trainer, data: Prepared) -> None:
        trainer.save_model(str(run.model_dir))
        if is_main():
            data.extras["tokenizer"].save_pretrained(str(run.model_dir))

    def validation_scores(self, trainer, model, data: Prepared, final: dict) -> dict:
        return final  # loss, rewards and margins as the Trainer's evaluation logs them

    def score(self, model, data: Prepared, split: str) -> dict:
        e = data.extras
        rows = getattr(data, split)
        return preference_run.score_test(
            e["trainer"], rows, pad_token_id(e["tokenizer"]), e["cfg"].eval.batch_size
        )

    def describe_scores(self, scores: dict, before: dict | None) -> str:
        if "examples" not in scores:  # validation: the Trainer's evaluation
            return f"loss {scores['eval_loss']:.4f}"
        return (
            preference_run.describe_test(scores)
            .split(" (held out")[0]
            .removeprefix("test loss after training: ")
        )

    def load_run(self, run: RunFolder, adapter_name: str = "default", into=None):
        return generator.load_run(run, adapter_name, into)  # the tuned model is a causal LM like any other

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


register_section(SECTION, PreferenceConfig)
PREFERENCE = register_task(PreferenceTask())
