"""The `tunesmith` command: parses arguments, calls tunesmith.api, prints. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from tunesmith.config import STARTERS
from tunesmith.errors import TunesmithError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith", description="Fine-tune a pre-trained model on your own data."
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    init = verbs.add_parser("init", help="print a commented starter config")
    init.add_argument("kind", choices=list(STARTERS))
    init.add_argument("--output", "-o", help="write to this file instead of printing (never overwrites)")

    train = verbs.add_parser("train", help="fine-tune as CONFIG says")
    train.add_argument("config")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest run of this config from its last checkpoint",
    )

    train.add_argument(
        "--nproc", type=int, default=1, help="data-parallel processes on this machine (gloo on CPU)"
    )
    train.add_argument(
        "--allow-pickle", action="store_true", help="allow .bin/.pt weights (loaded with weights_only=True)"
    )
    data = verbs.add_parser("data", help="data tools")
    data_verbs = data.add_subparsers(dest="data_verb", required=True)
    check = data_verbs.add_parser(
        "check", help="validate every row of a config's data (or one file) and print the report"
    )
    check.add_argument("target", metavar="CONFIG_OR_FILE")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    generate = verbs.add_parser("generate", help="complete prompts with a run's tuned model")
    generate.add_argument("run")
    generate.add_argument("--prompt", action="append", default=[])
    generate.add_argument("--file", help="JSONL with a 'prompt' field per line")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0)

    predict = verbs.add_parser("predict", help="label data with a classification run")
    predict.add_argument("run")
    predict.add_argument("--input", required=True, metavar="FILE_OR_FOLDER")
    predict.add_argument("--output", help=".jsonl or .csv (default: RUN/predictions/<input>.jsonl)")
    predict.add_argument("--batch-size", type=int, default=32)

    export = verbs.add_parser(
        "export", help="write a run's model as safetensors, ONNX or TorchScript (parity-checked)"
    )
    export.add_argument("run")
    export.add_argument("--format", required=True, choices=["safetensors", "onnx", "torchscript"])
    export.add_argument("--output", help="folder to create (default: RUN/export/FORMAT)")
    export.add_argument("--quantize", choices=["int8"], help="with --format onnx: dynamic int8 for CPUs")

    push = verbs.add_parser("push", help="upload a run's model with a generated model card to the hub")
    push.add_argument("run")
    push.add_argument("--repo", required=True, metavar="OWNER/NAME")
    push.add_argument("--dry-run", action="store_true", help="only write the folder that would be uploaded")
    push.add_argument("--private", action="store_true")
    push.add_argument("--output", help="where to write the upload folder (default: RUN/push/OWNER--NAME)")

    serve = verbs.add_parser("serve", help="serve runs behind an OpenAI-compatible HTTP API")
    serve.add_argument("runs", nargs="+", metavar="RUN")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $TUNESMITH_API_KEY)")
    serve.add_argument(
        "--max-concurrency", type=int, default=4, help="requests answered at once; more get 429"
    )
    serve.add_argument(
        "--max-tokens", type=int, default=512, help="the largest max_tokens a request may ask for"
    )

    evaluate = verbs.add_parser(
        "eval", help="score a run: loss/perplexity, ROUGE/BLEU, or classification metrics"
    )
    evaluate.add_argument("run")
    evaluate.add_argument(
        "--data", help="a data file in the run's format (default: the run's validation split)"
    )
    evaluate.add_argument(
        "--baseline", action="store_true", help="also score the untouched base model, side by side"
    )
    evaluate.add_argument("--generations", type=int, help="examples to generate (default: eval.generations)")

    report = verbs.add_parser("report", help="rebuild RUN/report.html from the run folder")
    report.add_argument("run")

    compare = verbs.add_parser("compare", help="write one HTML page comparing several runs")
    compare.add_argument("runs", nargs="+", metavar="RUN")
    compare.add_argument(
        "--output", help="HTML file to write (default: comparison.html beside the first run)"
    )

    sweep = verbs.add_parser("sweep", help="hyperparameter search over the config's sweep.space (Optuna)")
    sweep.add_argument("config")
    sweep.add_argument("--trials", type=int, help="total trials in the study (default: sweep.trials)")
    sweep.add_argument(
        "--storage", help="Optuna database URL shared by workers (default: SQLite in the sweep folder)"
    )
    sweep.add_argument("--study", dest="study_name", help="study name (default: the config's name)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    merge = verbs.add_parser("merge", help="merge a run's adapter into its base model")
    merge.add_argument("run")
    merge.add_argument("--output")

    quick = verbs.add_parser("quickstart", help="the embedded demo: SmolLM2 learns BBC headlines")
    quick.add_argument("--dir", default="quickstart")
    quick.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _read_prompts(path: str) -> list[str]:
    prompts = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunesmithError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise TunesmithError(f"{path}:{number}: expected an object with a string 'prompt' field")
        prompts.append(record["prompt"])
    return prompts


def run(args: argparse.Namespace) -> int:
    from tunesmith import api
    from tunesmith.training import distributed

    if args.verb == "init":
        text = api.init(args.kind)
        if args.output:
            target = Path(args.output)
            if target.exists():
                raise TunesmithError(f"{target} already exists; choose another --output")
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target}")
        else:
            print(text, end="")
        return 0
    if args.verb == "train":
        overrides = args.overrides + (["model.allow_pickle=true"] if args.allow_pickle else [])
        summary = api.train(args.config, overrides, resume=args.resume, nproc=args.nproc)
        if distributed.world_size() == 1:  # not a worker rank: the launcher (or a single process) reports
            print(f"run: {summary['run_dir']} ({summary['status']})")
        return 0
    if args.verb == "data":
        checked = api.check_data(args.target, args.overrides)
        for problem in checked.problems:
            print(problem)
        report = {k: v for k, v in checked.report.items() if not k.endswith("_list")}
        print(json.dumps(report, indent=2))
        print(f"{len(checked.problems)} bad row(s)" if checked.problems else "all rows valid")
        return 1 if checked.problems else 0
    if args.verb == "generate":
        prompts = args.prompt + (_read_prompts(args.file) if args.file else [])
        if not prompts:
            raise TunesmithError("generate: give --prompt TEXT or --file prompts.jsonl")
        for prompt, answer in zip(
            prompts, api.generate(args.run, prompts, args.max_new_tokens, args.temperature), strict=True
        ):
            print(json.dumps({"prompt": prompt, "completion": answer}) if len(prompts) > 1 else answer)
        return 0
    if args.verb == "predict":
        result = api.predict(args.run, args.input, args.output, args.batch_size)
        print(f"wrote {result['rows']} predictions to {result['output']}")
        return 0
    if args.verb == "export":
        result = api.export(args.run, args.format, args.output, args.quantize)
        line = f"exported {args.format} to {result['output']} (max logit difference vs PyTorch: {result['parity']['max_abs_logit_difference']:.2e})"
        quantization = result.get("quantization")
        if quantization:
            line += (
                f"; int8: {quantization['size_mb_before']} -> {quantization['size_mb_after']} MB, "
                f"{quantization['metric']} {quantization['before']} -> {quantization['after']}"
            )
        print(line)
        return 0
    if args.verb == "push":
        result = api.push(args.run, args.repo, args.dry_run, args.private, args.output)
        print(
            f"uploaded {result['folder']} to {args.repo}"
            if result["uploaded"]
            else f"wrote {result['folder']} (dry run: nothing uploaded)"
        )
        return 0
    if args.verb == "serve":
        api.serve(
            args.runs,
            args.host,
            args.port,
            api_key=args.api_key,
            max_concurrency=args.max_concurrency,
            max_tokens_cap=args.max_tokens,
        )
        return 0
    if args.verb == "eval":
        result = api.evaluate(args.run, args.data, args.baseline, args.generations)
        print(result["table"])
        print(f"wrote {result['folder']}")
        return 0
    if args.verb == "report":
        print(f"wrote {api.report(args.run)}")
        return 0
    if args.verb == "compare":
        print(f"wrote {api.compare(args.runs, args.output)}")
        return 0
    if args.verb == "sweep":
        result = api.sweep(args.config, args.overrides, args.trials, args.storage, args.study_name)
        best = result.get("best")
        if best:
            print(f"best trial {best['number']}: {result['metric']} = {best['value']:.6g} {best['params']}")
        print(
            f"wrote {result['best_config']} and {result['report']}" if best else f"wrote {result['report']}"
        )
        return 0
    if args.verb == "merge":
        result = api.merge(args.run, args.output)
        print(
            f"merged into {result['output']} (max logit difference vs adapter: {result['max_abs_logit_difference']:.2e})"
        )
        return 0
    if args.verb == "quickstart":
        from tunesmith import quickstart

        summary = api.train(quickstart.prepare(args.dir), args.overrides)
        quickstart.print_comparison(summary)
        return 0
    raise AssertionError(args.verb)


def _quiet_libraries() -> None:
    """Our own progress bar and messages say what happens; library warnings stay, their chatter goes."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    try:
        return run(args)
    except TunesmithError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
