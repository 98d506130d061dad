"""`tunesmith eval RUN [--data FILE] [--baseline]`: score a finished run, optionally beside its untouched base."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tunesmith.config import Config
from tunesmith.errors import TunesmithError
from tunesmith.tasks.common import bad_rows_error
from tunesmith.training.distributed import say
from tunesmith.training.run_folder import RunFolder, free_path


def _data_config(cfg: Config, data: str | Path | None, labels: list[str] | None = None):
    """The run's data settings, pointed at `data` (every row is evaluated) when given."""
    if data is None:
        return cfg.data
    source = Path(data).resolve()
    if not source.exists():
        raise TunesmithError(f"--data {data}: file not found")
    update = {
        "train_file": str(source),
        "validation_file": None,
        "validation_ratio": 0.0,
        "max_examples": None,
    }
    if labels is not None:
        update["labels"] = labels
    return cfg.data.model_copy(update=update)


def _output_folder(run: RunFolder, data: str | Path | None) -> Path:
    """RUN/eval/<data name>; an earlier evaluation is never overwritten (-2, -3, ...)."""
    folder = free_path(run.path / "eval" / (Path(data).stem if data else "validation"))
    folder.mkdir(parents=True)
    return folder


COUNTS = {"tokens", "examples", "generated_examples"}


def side_by_side(tuned: dict, baseline: dict | None) -> str:
    """The printed table: metric, tuned, base, difference."""
    names = [k for k, v in tuned.items() if isinstance(v, float) and k not in COUNTS]
    lines = [f"{'metric':<18}{'tuned':>14}" + (f"{'base':>14}{'difference':>14}" if baseline else "")]
    for name in names:
        line = f"{name:<18}{tuned[name]:>14.4f}"
        if baseline and isinstance(baseline.get(name), (int, float)):
            line += f"{baseline[name]:>14.4f}{tuned[name] - baseline[name]:>+14.4f}"
        lines.append(line)
    return "\n".join(lines)


def evaluate_run(
    run: RunFolder, data: str | Path | None, baseline: bool, generations: int | None = None
) -> dict:
    cfg = run.load_config()
    summary = run.finished_summary("eval")
    if cfg.task == "causal-lm":
        result = _evaluate_causal_lm(
            run, cfg, data, baseline, cfg.eval.generations if generations is None else generations
        )
    else:
        result = _evaluate_classifier(run, cfg, summary, data, baseline)
    folder = _output_folder(run, data)
    generated = result.pop("generated", None)
    if generated:
        with (folder / "generations.jsonl").open("w", encoding="utf-8") as handle:
            for record in generated:
                handle.write(json.dumps(record) + "\n")
    result |= {
        "data": str(data) if data else "validation split of the run",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if result.get("baseline"):
        result["difference"] = {
            k: round(v - result["baseline"][k], 6)
            for k, v in result["tuned"].items()
            if isinstance(v, float)
            and k not in COUNTS
            and isinstance(result["baseline"].get(k), (int, float))
        }
    (folder / "evaluation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    from tunesmith.report.run_report import write_run_report

    write_run_report(run)
    return result | {"folder": str(folder), "table": side_by_side(result["tuned"], result.get("baseline"))}


def _evaluate_causal_lm(run: RunFolder, cfg: Config, data, baseline: bool, generations: int) -> dict:
    from tunesmith.data.collate import pad_token_id
    from tunesmith.data.prepare import check_data, tokenize_data
    from tunesmith.evaluation.generation import generate
    from tunesmith.evaluation.lm import language_model_loss
    from tunesmith.evaluation.text_metrics import generation_scores
    from tunesmith.models.loading import default_cache_dir, load_model
    from tunesmith.tasks.causal_lm import load_run_model, overflow_line, sample_conversations

    data_cfg = _data_config(cfg, data)
    checked = check_data(data_cfg)
    if checked.problems and data_cfg.on_error == "stop":
        raise bad_rows_error(checked)
    model, renderer, _ = load_run_model(run)
    tokenized = tokenize_data(checked, data_cfg, renderer, default_cache_dir(cfg.output.cache_dir))
    split = "train" if data else "validation"
    examples = checked.train if data else checked.validation
    rows = tokenized[split]
    if not rows:
        raise TunesmithError(f"eval: no examples to score in {data or 'the validation split'}")
    over = tokenized["report"]["over_max_length"][split]
    if over["count"]:
        say(f"eval: {overflow_line(over, 'evaluated')}")
    tokenizer = renderer.tokenizer
    pad_id = pad_token_id(tokenizer)
    prompts = sample_conversations(examples, generations)

    def score(network) -> tuple[dict, list[str]]:
        scores = language_model_loss(network, rows, pad_id, cfg.eval.batch_size)
        outputs = (
            generate(network, renderer, [p[1] for p in prompts], cfg.eval.max_new_tokens) if prompts else []
        )
        if prompts:
            scores |= generation_scores([p[2] for p in prompts], outputs)
            scores["generated_examples"] = scores.pop("examples")
            scores["examples"] = len(rows)
        return scores, outputs

    tuned, outputs = score(model)
    base, base_outputs = None, [None] * len(prompts)
    if baseline:
        if hasattr(model, "disable_adapter"):  # LoRA/DoRA: the base is the same weights with the adapter off
            context = model.disable_adapter()
            base_model = model
        else:
            summary = run.read_summary()
            base_model = load_model(summary["base_model_path"], cfg.model)
            context = nullcontext()
        with context:
            base, base_outputs = score(base_model)
    generated = [
        {
            "where": where,
            "prompt": messages[-1][1],
            "reference": reference,
            "output": output,
            "base_output": base_output,
        }
        for (where, messages, reference), output, base_output in zip(
            prompts, outputs, base_outputs, strict=True
        )
    ]
    return {"task": cfg.task, "examples": len(rows), "tuned": tuned, "baseline": base, "generated": generated}


def _evaluate_classifier(run: RunFolder, cfg: Config, summary: dict, data, baseline: bool) -> dict:
    from transformers import set_seed

    from tunesmith.data.labelled import check_labelled
    from tunesmith.evaluation.classification import full_report, predicted, probabilities
    from tunesmith.models.loading import load_model
    from tunesmith.tasks.classification import classifier_arguments, fresh_head_unless_same_labels
    from tunesmith.tasks.classification_predict import RunClassifier
    from tunesmith.tasks.modalities import label_target

    labels = summary["labels"]
    data_cfg = _data_config(cfg, data, labels)
    checked = check_labelled(data_cfg, cfg.task)
    if checked.problems and data_cfg.on_error == "stop":
        raise bad_rows_error(checked)
    examples = checked.train if data else checked.validation
    if not examples:
        raise TunesmithError(f"eval: no labelled examples in {data or 'the validation split'}")
    label_ids = {label: i for i, label in enumerate(labels)}
    targets = np.asarray([label_target(e, label_ids, cfg.data.multi_label) for e in examples])
    classifier = RunClassifier(run)
    # The network sees the inputs only; the targets are scored here.
    inputs = [replace(e, labels=()) for e in examples]

    def scores(logits) -> dict:
        chosen = predicted(probabilities(logits, cfg.data.multi_label), cfg.data.multi_label)
        report = full_report(targets, chosen, labels, cfg.data.multi_label)
        return {k: v for k, v in report.items() if isinstance(v, float)} | {"per_class": report["per_class"]}

    tuned = scores(classifier.logits(inputs, cfg.eval.batch_size, progress=False))
    base = None
    if baseline:
        # The untouched base: the pretrained network with a new head for these labels, seeded as training seeded it.
        set_seed(cfg.train.seed)
        network = load_model(
            summary["base_model_path"],
            cfg.model,
            None,
            classifier.modality.auto_class,
            **classifier_arguments(cfg, labels),
        )
        fresh_head_unless_same_labels(network, summary["base_model_path"], labels)
        classifier.model, classifier.head = network.to(classifier.device).eval(), None
        base = scores(classifier.logits(inputs, cfg.eval.batch_size, progress=False))
    return {"task": cfg.task, "examples": len(examples), "tuned": tuned, "baseline": base}
