"""A preference run's evaluations: pair scores before/after, `tunesmith eval` on held-out pairs, export checks."""

from __future__ import annotations

import contextlib

import torch

from tunesmith.console import say
from tunesmith.data.collate import pad_token_id
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.generation import generate
from tunesmith.evaluation.text_metrics import generation_scores
from tunesmith.models.exportable import MAX_VALIDATION_EXAMPLES, Exportable
from tunesmith.models.loading import load_model
from tunesmith.run_folder import RunFolder
from tunesmith.tasks import generator
from tunesmith.tasks.common import bad_rows_error, data_for_eval
from tunesmith.tasks.generator import eval_result
from tunesmith.tasks.preference.data import PreferencePair, check_preference_data, tokenize_preference
from tunesmith.tasks.preference.scoring import score_pairs
from tunesmith.tasks.preference.settings import SECTION


def base_weights(model, reference_model):
    """A context in which `reference_model or model` answers as the base: the adapter off, or untouched weights."""
    if reference_model is None and hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return contextlib.nullcontext()  # a frozen copy, or a full model before its first step


def describe_pairs(when: str, scores: dict) -> str:
    return (
        f"preference accuracy {when}: of {scores['pairs']} held-out pairs, the chosen answer is the likelier "
        f"whole answer in {100 * scores['likelihood_accuracy']:.1f}% and the likelier per token in "
        f"{100 * scores['preference_accuracy']:.1f}% (mean log-prob per token, chosen "
        f"{scores['mean_logp_chosen']:.3f} vs rejected {scores['mean_logp_rejected']:.3f})"
    )


def sample_prompts(examples: list, count: int) -> list[tuple]:
    """(where, prompt conversation, the chosen answer) of the first held-out pairs, for generations."""
    pairs = [e for e in examples if isinstance(e, PreferencePair)]
    desirable = [e for e in examples if getattr(e, "desirable", False)]
    if pairs:
        return [(p.where, p.prompt, p.chosen) for p in pairs[:count]]
    return [(e.where, e.prompt, e.completion) for e in desirable[:count]]


def held_out_pairs(cfg, data) -> tuple[list[PreferencePair], str]:
    """The pairs `tunesmith eval` scores and their split: the run's test split (nothing was chosen on it), else
    its validation split, or every row of --data."""
    data_cfg = data_for_eval(cfg.data, data)
    try:  # a run of an unpaired loss (KTO) is evaluated on pairs too
        checked = check_preference_data(data_cfg, cfg.section(SECTION), as_pairs=True)
    except TunesmithError as error:
        raise TunesmithError(f"eval: preference accuracy needs chosen/rejected pairs; {error}") from None
    if checked.problems and data_cfg.on_error == "stop":
        raise bad_rows_error(checked)
    split = "data" if data else ("test" if checked.test else "validation")
    pairs = {"data": checked.train, "test": checked.test, "validation": checked.validation}[split]
    if not pairs:
        raise TunesmithError(f"eval: no pairs to score in {data or 'the validation split'}")
    return pairs, split


def score_test(trainer, rows: list[dict], pad_id: int, batch_size: int) -> dict:
    """The final weights on the test split, once: the loss and reward margin as validation logs them, and for
    pairs the reward and per-token preference accuracies. Outside Trainer.evaluate, so that no callback, checkpoint
    choice or metrics.jsonl row ever sees the test split."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    loss_sum, chosen, rejected = 0.0, [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = {key: value.to(model.device) for key, value in trainer.data_collator(chunk).items()}
            result, _ = trainer.preference_step(model, batch)
            loss_sum += result.loss.item() * len(chunk)
            chosen.append(result.chosen_rewards)
            rejected.append(result.rejected_rewards)
    model.train(was_training)
    chosen, rejected = torch.cat(chosen), torch.cat(rejected)
    scores = {"examples": len(rows), "loss": round(loss_sum / len(rows), 6)}
    if len(chosen) and len(rejected):  # KTO: a test split may hold one kind of answer only
        scores["reward_margin"] = round((chosen.mean() - rejected.mean()).item(), 6)
    if "chosen_ids" in rows[0]:
        scores["reward_accuracy"] = round((chosen > rejected).float().mean().item(), 4)
        pairs = score_pairs(model, rows, pad_id, batch_size)
        scores |= {key: pairs[key] for key in ("preference_accuracy", "likelihood_accuracy")}
    return scores


def describe_test(scores: dict) -> str:
    margin = f", reward margin {scores['reward_margin']:.4f}" if "reward_margin" in scores else ""
    accuracy = (
        f", preference accuracy {100 * scores['preference_accuracy']:.1f}%"
        if "preference_accuracy" in scores
        else ""
    )
    return (
        f"test loss after training: {scores['loss']:.4f}{margin}{accuracy} on {scores['examples']} test examples "
        "(held out: no checkpoint or setting was chosen on them)"
    )


def evaluate(run: RunFolder, data, baseline: bool, generations: int | None) -> dict:
    """Preference accuracy on held-out pairs, and generations scored against the chosen answers; base beside it."""
    tuned_lm = generator.load_run(run)
    model, renderer, cfg = tuned_lm.model, tuned_lm.renderer, tuned_lm.cfg
    generations = cfg.eval.generations if generations is None else generations
    pairs, split = held_out_pairs(cfg, data)
    items, report = tokenize_preference(pairs, renderer, cfg.data.max_length, "evaluated")
    if report["evaluated_over_max_length"]["count"]:
        say(
            f"eval: {report['evaluated_over_max_length']['count']} pairs longer than max_length were left out"
        )
    pad_id = pad_token_id(renderer.tokenizer)
    prompts = sample_prompts(pairs, generations)

    def score(network) -> tuple[dict, list[str]]:
        scores = score_pairs(network, items, pad_id, cfg.eval.batch_size)
        outputs = (
            generate(network, renderer, [p[1] for p in prompts], cfg.eval.max_new_tokens, cfg.eval.batch_size)
            if prompts
            else []
        )
        if prompts:
            scores |= {
                f"generation_{k}": v for k, v in generation_scores([p[2] for p in prompts], outputs).items()
            }
            scores["mean_answer_words"] = round(sum(len(o.split()) for o in outputs) / len(outputs), 1)
        return scores, outputs

    tuned, outputs = score(model)
    base, base_outputs = None, [None] * len(prompts)
    if baseline:
        if hasattr(model, "disable_adapter"):  # LoRA/DoRA: the base is the same weights with the adapter off
            with model.disable_adapter():
                base, base_outputs = score(model)
        else:
            base, base_outputs = score(load_model(generator.base_model_path(run, cfg), cfg.model))
    return eval_result(cfg, split, len(items), (tuned, base), prompts, outputs, base_outputs)


def exportable(run: RunFolder, auto_class: str) -> Exportable:
    """As a causal-LM run's, with the held-out pairs' chosen answers as the validation batches."""
    tuned_lm = generator.load_run(run)
    pairs = held_out_pairs(tuned_lm.cfg, None)[0][:MAX_VALIDATION_EXAMPLES]
    items, _ = tokenize_preference(pairs, tuned_lm.renderer, tuned_lm.cfg.data.max_length, "export")
    rows = [
        {
            "input_ids": i["prompt_ids"] + i["chosen_ids"],
            "labels": [-100] * len(i["prompt_ids"]) + i["chosen_ids"],
        }
        for i in items
    ]
    return generator.exportable(tuned_lm, rows, auto_class)
