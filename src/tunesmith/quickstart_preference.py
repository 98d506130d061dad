"""`tunesmith quickstart preference`: SmolLM2-135M-Instruct learns BBC's headline style from preferences.

Each pair: prompt = an article's opening, chosen = its real BBC headline, rejected = what the base model writes
for it (generated once, cached in data/base_answers.jsonl). Runs on a laptop CPU.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import yaml

from tunesmith.quickstart import _write_jsonl, headline_examples, save_figures, smollm2_folder

BODY_CHARS = 250  # the article's opening: enough to tell its story (the prompt is most of each pair's tokens)
REJECTED_TOKENS = 48  # the base writes a paragraph; this much of it is the rejected answer


# The base model's answers to the demo's 150 prompts, generated once by `base_answers` on a CPU and shipped, so
# the demo does not spend most of its time writing them again (26.5 min on a shared 2-core host). They are used
# only when the installed model is the one that wrote them (same weights, template and settings).
SHIPPED_ANSWERS = Path(__file__).parent / "starters" / "preference_base_answers.jsonl"


def model_identity(folder: Path) -> str:
    """Which model and settings wrote the answers: config, tokenizer (its chat template), and each weights
    file's size and first and last 4 MB."""
    digest = hashlib.sha256(f"greedy, max_new_tokens={REJECTED_TOKENS}".encode())
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        if (folder / name).exists():
            digest.update((folder / name).read_bytes())
    for weights in sorted(folder.glob("*.safetensors")):
        with weights.open("rb") as handle:
            digest.update(str(weights.stat().st_size).encode() + handle.read(1 << 22))
            handle.seek(max(0, weights.stat().st_size - (1 << 22)))
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def shipped_answers() -> dict[str, str]:
    """The shipped answers when the installed model is the one that wrote them, else nothing."""
    if not SHIPPED_ANSWERS.exists():
        return {}
    header, *rows = SHIPPED_ANSWERS.read_text(encoding="utf-8").splitlines()
    if json.loads(header).get("model") != model_identity(smollm2_folder()):
        return {}
    return {row["prompt"]: row["answer"] for row in map(json.loads, rows)}


def base_answers(prompts: list[str], cache: Path, chunk: int = 32) -> list[str]:
    """The untouched model's greedy answer to each prompt; written to `cache` as it goes, so a stopped demo
    resumes where it was and a finished one never generates again. Chunks of 32: a decoding step reads every
    weight whatever the batch, so on a CPU 32 rows cost about 2.5x the time of 2 (measured on SmolLM2)."""
    known = {}
    if cache.exists():
        known = {row["prompt"]: row["answer"] for row in map(json.loads, cache.read_text().splitlines())}
    else:
        shipped = shipped_answers()
        known = {p: shipped[p] for p in prompts if p in shipped}
        if known:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in known.items()))
            print(
                f"the base model's answers to {len(known)} prompts: shipped with tunesmith, written by this same model"
            )
    missing = [p for p in dict.fromkeys(prompts) if p not in known]
    if missing:
        from tunesmith.config import ModelConfig
        from tunesmith.data.templates import Renderer
        from tunesmith.evaluation.generation import generate
        from tunesmith.models.loading import default_cache_dir, load_model, load_tokenizer, resolve_model

        model_cfg = ModelConfig(name=str(smollm2_folder()))
        path = resolve_model(model_cfg, default_cache_dir())
        renderer = Renderer(load_tokenizer(path, model_cfg))
        model = load_model(path, model_cfg)
        print(
            f"writing the rejected answers: the base model answers {len(missing)} prompts (once; cached in {cache})"
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(missing), chunk):
            batch = missing[start : start + chunk]
            answers = generate(
                model, renderer, [(("user", p),) for p in batch], REJECTED_TOKENS, batch_size=chunk
            )
            with cache.open("a", encoding="utf-8") as handle:
                for prompt, answer in zip(batch, answers, strict=True):
                    handle.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
                    known[prompt] = answer
            print(f"  {min(start + chunk, len(missing))}/{len(missing)}")
    return [known[p] for p in prompts]


def preference_config() -> dict:
    from tunesmith.tasks.preference import PREFERENCE

    return dict(
        task=PREFERENCE.name,
        model={"name": str(smollm2_folder())},
        data={
            "train_file": "data/train.jsonl",
            "validation_file": "data/validation.jsonl",
            "max_length": 256,
        },
        # beta 0.02: at 0.1 DPO saturated by step 10 of 30 on these pairs; sft_weight adds the headlines' NLL
        # (RPO) so the tuned model writes headlines about the article rather than merely avoiding paragraphs.
        preference={"loss": "dpo", "beta": 0.02, "sft_weight": 1.0, "precompute_reference": True},
        method={
            "name": "lora",
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        },
        train={
            "batch_size": 4,
            "epochs": 1,
            "learning_rate": 2e-4,
            "warmup": 0.1,
            "logging_steps": 5,
            "eval_steps": 30,
            "precision": "fp32",
        },
        # before_training off: the base's figures come from the recipe's own before/after scoring and eval --baseline
        eval={
            "before_training": False,
            "samples": 3,
            "max_new_tokens": 24,
            "reference": "data/reference.txt",
            "batch_size": 16,
        },
        output={"dir": "runs", "name": "headline-style"},
    )


def prepare(folder: str | Path = "quickstart-preference", train: int = 120, validation: int = 30) -> Path:
    """Write the pairs and the config (keeping a config the user already edited); return the config path."""
    from tunesmith.quickstart import reference_texts

    folder = Path(folder)
    train_rows, validation_rows = headline_examples(train, validation, body_chars=BODY_CHARS)
    rejected = base_answers(
        [r["prompt"] for r in train_rows + validation_rows], folder / "data" / "base_answers.jsonl"
    )
    pairs = [
        {"prompt": row["prompt"], "chosen": row["response"], "rejected": answer, "source": row["source"]}
        for row, answer in zip(train_rows + validation_rows, rejected, strict=True)
    ]
    for name, rows in (("train", pairs[:train]), ("validation", pairs[train:])):
        if not (folder / "data" / f"{name}.jsonl").exists():
            _write_jsonl(folder / "data" / f"{name}.jsonl", rows)
    reference = folder / "data" / "reference.txt"
    if not reference.exists():
        used = {row["source"] for row in pairs}
        reference.write_text("\n".join(reference_texts(50, used)) + "\n", encoding="utf-8")
    config_path = folder / "config.yaml"
    if not config_path.exists():
        header = "# tunesmith quickstart: SmolLM2-135M-Instruct learns BBC's headline style from preference pairs.\n"
        config_path.write_text(
            header + yaml.safe_dump(preference_config(), sort_keys=False), encoding="utf-8"
        )
    return config_path


# What the closing table shows of `tunesmith eval --baseline`, base and tuned.
SHOWN_METRICS = ("likelihood_accuracy", "preference_accuracy", "mean_answer_words", "generation_rougeL")


def print_comparison(summary: dict, evaluation: dict) -> None:
    """Held-out preference accuracy, answer length and ROUGE-L, base vs tuned; three generations side by side.
    The figures are saved first to <run>/quickstart.json."""
    base, tuned = evaluation["baseline"], evaluation["tuned"]
    shown = ("pairs", *SHOWN_METRICS)
    saved = save_figures(
        summary,
        {
            "evaluation_folder": str(evaluation["folder"]),
            "base": {key: base.get(key) for key in shown},
            "tuned": {key: tuned.get(key) for key in shown},
        },
    )
    print(f"\nheld-out pairs: {tuned['pairs']}")
    print(f"{'':28}{'base':>10}{'tuned':>10}")
    for key, label in (
        ("likelihood_accuracy", "chosen likelier, whole (%)"),
        ("preference_accuracy", "chosen likelier/token (%)"),
    ):
        print(f"{label:28}{100 * base[key]:>10.1f}{100 * tuned[key]:>10.1f}")
    print(
        f"{'answer length (words)':28}{base['mean_answer_words']:>10.1f}{tuned['mean_answer_words']:>10.1f}"
    )
    print(
        f"{'ROUGE-L vs real headlines':28}{base['generation_rougeL']:>10.2f}{tuned['generation_rougeL']:>10.2f}"
    )
    forgetting = summary.get("forgetting")
    if forgetting:
        print(f"forgetting check: reference perplexity drift {forgetting.get('drift_percent', '?')}%")
    generations = Path(evaluation["folder"]) / "generations.jsonl"
    for number, line in enumerate(generations.read_text().splitlines()[:3], start=1):
        sample = json.loads(line)
        article = sample["prompt"].split("\n\n", 1)[-1]
        print(f"\n[{number}] {textwrap.shorten(article, 110)}")
        print(f"    real:  {sample['reference']}")
        print(f"    base:  {textwrap.shorten(sample['base_output'], 150)}")
        print(f"    tuned: {sample['output']}")
    print(f"\nthe whole run on one page: {Path(summary['run_dir']) / 'report.html'}")
    print(f"these figures, saved: {saved}")
