"""The `tunesmith` command: parses arguments, calls tunesmith.api, prints. No logic of its own.

VERBS is the one table of verbs: each names its API function, its help line, its arguments and how its
result is printed (litgpt's PARSER_DATA is the model); tests/test_cli.py checks it stays in sync with api.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.console import quiet_libraries
from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class Verb:
    function: str  # the tunesmith.api function it calls
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    call: Callable[[object, argparse.Namespace], object]  # (api module, args) -> result
    show: Callable[[argparse.Namespace, object], int]  # prints the result; returns the exit code


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.learning_rate=1e-4 (repeatable)",
    )


def _run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder that `tunesmith train` created")


# -- init ------------------------------------------------------------------------------------------------
def _init_arguments(parser):
    from tunesmith.config import starter_names

    parser.add_argument("kind", choices=starter_names(), help="which starter config to print")
    parser.add_argument("--output", "-o", help="write to this file instead of printing (never overwrites)")


def _show_init(args, text) -> int:
    if not args.output:
        print(text, end="")
        return 0
    target = Path(args.output)
    if target.exists():
        raise TunesmithError(f"{target} already exists; choose another --output")
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


# -- train -----------------------------------------------------------------------------------------------
def _train_arguments(parser):
    parser.add_argument("config", help="the YAML config (`tunesmith init` writes a commented one)")
    _overrides(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest run of this config from its last checkpoint",
    )
    parser.add_argument(
        "--nproc", type=int, default=1, help="data-parallel processes on this machine (gloo on CPU)"
    )
    nodes = parser.add_argument_group("several machines (run the same command on every node)")
    nodes.add_argument("--nnodes", type=int, default=1, help="machines in the run")
    nodes.add_argument("--node-rank", type=int, default=0, help="this machine's place, 0 .. nnodes-1")
    nodes.add_argument(
        "--master-addr", default="127.0.0.1", help="address of node 0, where the nodes meet (c10d rendezvous)"
    )
    nodes.add_argument("--master-port", type=int, default=29500, help="a free port on node 0")
    nodes.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="restart the workers this many times after one dies; the run resumes from its last checkpoint",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow .bin/.pt weights (loaded with weights_only=True)"
    )


def _call_train(api, args):
    import os

    import psutil

    # train.time_budget counts the whole command, imports included (ranks started by --nproc inherit it)
    os.environ.setdefault("TUNESMITH_STARTED_AT", str(psutil.Process().create_time()))
    overrides = args.overrides + (["model.allow_pickle=true"] if args.allow_pickle else [])
    from tunesmith.training.distributed import Cluster

    cluster = Cluster(
        processes=args.nproc,
        nodes=args.nnodes,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        max_restarts=args.max_restarts,
    )
    return api.train(args.config, overrides, resume=args.resume, cluster=cluster)


def _show_train(args, summary) -> int:
    from tunesmith.console import world_size

    if world_size() == 1:  # not a worker rank: the launcher (or a single process) reports
        print(f"run: {summary['run_dir']} ({summary['status']})")
    return 0


# -- launch ----------------------------------------------------------------------------------------------
def _launch_arguments(parser):
    from tunesmith.training.launch_files import ENGINES, TARGETS

    parser.add_argument("config", help="the YAML config every node will train")
    parser.add_argument("--print", dest="target", required=True, choices=TARGETS, help="which file to write")
    parser.add_argument("--nodes", type=int, default=1, help="machines")
    parser.add_argument("--gpus-per-node", type=int, default=1, help="GPUs (worker processes) per machine")
    parser.add_argument("--engine", choices=ENGINES, help="default: the config's train.distributed")
    parser.add_argument("--output", "-o", help="write to this file instead of printing (never overwrites)")
    _overrides(parser)


def _call_launch(api, args):
    return api.launch(args.config, args.target, args.nodes, args.gpus_per_node, args.engine, args.overrides)


# -- data check ------------------------------------------------------------------------------------------
def _data_arguments(parser):
    checks = parser.add_subparsers(dest="data_verb", required=True)
    check = checks.add_parser(
        "check", help="validate every row of a config's data (or one file) and print the report"
    )
    check.add_argument("target", metavar="CONFIG_OR_FILE", help="a YAML config, or one data file")
    check.add_argument(
        "--preview",
        type=int,
        default=0,
        metavar="N",
        help="show the first N training examples as the model sees them (the trained part between [[ and ]])",
    )
    _overrides(check)


def _show_data(args, checked) -> int:
    for problem in checked.problems:
        print(problem)
    report = {k: v for k, v in checked.report.items() if not k.endswith("_list") and k != "preview"}
    print(json.dumps(report, indent=2))
    from tunesmith.data.lengths import describe

    for line in describe(checked.report.get("lengths", {"checked": True})):
        print(line)
    if "preview" in checked.report:
        from tunesmith.data.preview import describe as describe_preview

        for line in describe_preview(checked.report["preview"]):
            print(line)
    print(f"{len(checked.problems)} bad row(s)" if checked.problems else "all rows valid")
    return 1 if checked.problems else 0


# -- generate --------------------------------------------------------------------------------------------
def _generate_arguments(parser):
    _run_argument(parser)
    parser.add_argument("--prompt", action="append", default=[], help="a prompt to answer (repeatable)")
    parser.add_argument("--file", help="a JSONL file with a 'prompt' field per line")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the longest answer, in tokens")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 answers greedily; higher samples more freely"
    )


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


def _call_generate(api, args):
    args.prompts = args.prompt + (_read_prompts(args.file) if args.file else [])
    if not args.prompts:
        raise TunesmithError("generate: give --prompt TEXT or --file prompts.jsonl")
    return api.generate(args.run, args.prompts, args.max_new_tokens, args.temperature)


def _show_generate(args, answers) -> int:
    for prompt, answer in zip(args.prompts, answers, strict=True):
        print(json.dumps({"prompt": prompt, "completion": answer}) if len(args.prompts) > 1 else answer)
    return 0


# -- predict ---------------------------------------------------------------------------------------------
def _predict_arguments(parser):
    _run_argument(parser)
    parser.add_argument(
        "--input", required=True, metavar="FILE_OR_FOLDER", help="a table (.csv/.jsonl/.parquet) or a folder"
    )
    parser.add_argument("--output", help=".jsonl or .csv (default: RUN/predictions/<input>.jsonl)")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass")


# -- export, push, merge ---------------------------------------------------------------------------------
def _export_arguments(parser):
    from tunesmith.export.formats import FORMATS
    from tunesmith.export.gguf_writer import QUANTIZATIONS

    _run_argument(parser)
    parser.add_argument("--format", required=True, choices=list(FORMATS), help="the file format to write")
    parser.add_argument(
        "--output", help="folder to create (default: RUN/export/FORMAT; gguf: RUN/export/gguf-QUANTIZE)"
    )
    parser.add_argument(
        "--quantize",
        choices=["int8", *QUANTIZATIONS],
        help="onnx: int8 (dynamic, for CPUs); gguf: f32, f16 (default), q8_0, or k-quants with llama.cpp installed",
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        help="largest quality loss a quantized export may show before it is refused: int8 accuracy points "
        "(classifiers) or validation-loss increase (causal LM); GGUF top-1 disagreement",
    )
    parser.add_argument("--max-kl", type=float, help="gguf: largest mean KL divergence from the tuned model")


def _show_export(args, result) -> int:
    if args.format == "gguf":
        checks = result["checks"]
        print(f"exported gguf {result['quantization']} to {result['output']}")
        for name in ("reload", "llama_cpp"):
            print(f"  {name}: {checks[name].get('verdict') or checks[name].get('skipped')}")
        template = checks["template"]
        print(f"  template: {template['equal']} of {template['prompts']} prompts give training's token ids")
        return 0
    line = (
        f"exported {args.format} to {result['output']} "
        f"(max logit difference vs PyTorch: {result['parity']['max_abs_logit_difference']:.2e})"
    )
    quantization = result.get("quantization")
    if quantization:
        line += (
            f"; int8: {quantization['size_mb_before']} -> {quantization['size_mb_after']} MB, "
            f"{quantization['metric']} {quantization['before']} -> {quantization['after']} "
            f"({quantization['gate']['verdict']})"
        )
    print(line)
    return 0


def _push_arguments(parser):
    _run_argument(parser)
    parser.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the hub repository to upload to")
    parser.add_argument("--dry-run", action="store_true", help="only write the folder that would be uploaded")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--output", help="where to write the upload folder (default: RUN/push/OWNER--NAME)")


def _show_push(args, result) -> int:
    print(
        f"uploaded {result['folder']} to {args.repo}"
        if result["uploaded"]
        else f"wrote {result['folder']} (dry run: nothing uploaded)"
    )
    return 0


def _merge_arguments(parser):
    _run_argument(parser)
    parser.add_argument("--output", help="folder to create (default: RUN/merged)")


# -- serve -----------------------------------------------------------------------------------------------
def _serve_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders to serve (each is one model id)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $TUNESMITH_API_KEY)")
    parser.add_argument(
        "--max-concurrency", type=int, default=4, help="requests answered at once; more get 429"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=512, help="the largest max_tokens a request may ask for"
    )
    parser.add_argument(
        "--reasoning",
        choices=["separate", "inline"],
        default="separate",
        help="a chat answer's <think> block: in reasoning_content (separate) or left in content (inline)",
    )


def _call_serve(api, args):
    options = {
        "api_key": args.api_key,
        "max_concurrency": args.max_concurrency,
        "max_tokens_cap": args.max_tokens,
        "reasoning": args.reasoning,
    }
    return api.serve(args.runs, args.host, args.port, **options)


def _ui_arguments(parser):
    parser.add_argument(
        "--workdir", default="tunesmith-ui", help="where uploads, settings, runs and jobs are kept"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (any other than this machine's needs --api-key)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument(
        "--api-key", help="require this key on every page and route (default: $TUNESMITH_UI_KEY)"
    )
    parser.add_argument(
        "--root-path",
        default="",
        help="the path prefix a reverse proxy serves the page under, e.g. /tunesmith",
    )
    parser.add_argument(
        "--max-upload-mb", type=int, default=200, help="the largest data file the page accepts"
    )
    parser.add_argument(
        "--max-running", type=int, default=1, help="jobs run at once; the rest wait in a queue"
    )


def _call_ui(api, args):
    from tunesmith.ui import serve

    return serve(
        args.workdir, args.host, args.port, args.api_key, args.root_path, args.max_upload_mb, args.max_running
    )


# -- eval, report, compare, sweep, quickstart ------------------------------------------------------------
def _eval_arguments(parser):
    _run_argument(parser)
    parser.add_argument(
        "--data", help="a data file in the run's format (default: the run's validation split)"
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also score the untouched base model, side by side"
    )
    parser.add_argument("--generations", type=int, help="examples to generate (default: eval.generations)")
    parser.add_argument(
        "--bench",
        nargs="+",
        metavar="TASK",
        help="lm-eval benchmarks, base vs tuned: multiple-choice .jsonl files, lm-eval task .yaml files on "
        "local data, or `capitals` (the built-in knowledge probe)",
    )
    parser.add_argument(
        "--judge",
        metavar="URL_OR_RUN",
        help="a pairwise judge of base vs tuned answers on the held-out prompts, both orders: an "
        "OpenAI-compatible server's address (e.g. a `tunesmith serve`; OPENAI_API_KEY is sent if set) or a run "
        "folder judging in this process; nothing is contacted unless given",
    )
    parser.add_argument("--judge-model", help="the judge server's model (default: the first it lists)")


def _show_eval(args, result) -> int:
    print(result["table"])
    print(f"wrote {result['folder']}")
    return 0


def _compare_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders to compare")
    parser.add_argument("--output", help="HTML file to write (default: comparison.html beside the first run)")


def _sweep_arguments(parser):
    parser.add_argument("config", help="a YAML config with a sweep: section")
    parser.add_argument("--trials", type=int, help="total trials in the study (default: sweep.trials)")
    parser.add_argument(
        "--storage", help="Optuna database URL shared by workers (default: SQLite in the sweep folder)"
    )
    parser.add_argument("--study", dest="study_name", help="study name (default: the config's name)")
    parser.add_argument(
        "--time", help="end the sweep within this time (e.g. 1h): trials start only while one still fits"
    )
    _overrides(parser)


def _show_sweep(args, result) -> int:
    best = result.get("best")
    if best:
        print(f"best trial {best['number']}: {result['metric']} = {best['value']:.6g} {best['params']}")
    print(f"wrote {result['best_config']} and {result['report']}" if best else f"wrote {result['report']}")
    return 0


def _plan_arguments(parser):
    parser.add_argument(
        "source", help="a config .yaml, or a data file or folder (then --model names the model)"
    )
    parser.add_argument(
        "--time",
        required=True,
        help="your wall clock for planning and training together, e.g. 20m, 90s, 1h: the probes get at most 40%%"
        " of it (cached ones cost nothing), the run the rest (train.time_budget, counted from `tunesmith train`);"
        " a budget too small for one probe is refused at once, naming one that could fit",
    )
    parser.add_argument(
        "--memory", help="the most memory the run may use, e.g. 8G (default: 90%% of free memory)"
    )
    parser.add_argument(
        "--model", help="the model to fine-tune (a local folder or hub id) when SOURCE is data"
    )
    parser.add_argument("--task", help="the task when SOURCE is data (default: guessed from its fields)")
    parser.add_argument(
        "--output", help="the config file to write (default: plan-<time>.yaml, never overwritten)"
    )


def _show_plan(args, result) -> int:
    print(f"wrote {result['config']}: {result['method']}, predicted {result['predicted_seconds']:.0f} s")
    print(f"train it with:  tunesmith train {result['config']}")
    return 0


def _quickstart_arguments(parser):
    parser.add_argument(
        "kind",
        nargs="?",
        default="sft",
        choices=("sft", "preference", "tools"),
        help="sft: write headlines; preference: learn BBC's headline style from preference pairs (DPO); "
        "tools: call functions and answer from their results",
    )
    parser.add_argument("--dir", default="quickstart", help="where the demo writes its data, config and runs")
    _overrides(parser)


def _wrote(args, path) -> int:
    print(f"wrote {path}")
    return 0


def _done(args, result) -> int:
    return 0


VERBS: dict[str, Verb] = {
    "init": Verb(
        "init",
        "print a commented starter config",
        _init_arguments,
        lambda api, a: api.init(a.kind),
        _show_init,
    ),
    "train": Verb("train", "fine-tune as CONFIG says", _train_arguments, _call_train, _show_train),
    "launch": Verb(
        "launch",
        "write a cluster launch file for CONFIG: sbatch script, accelerate config or SkyPilot task",
        _launch_arguments,
        _call_launch,
        _show_init,
    ),
    "data": Verb(
        "check_data",
        "data tools",
        _data_arguments,
        lambda api, a: api.check_data(a.target, a.overrides, a.preview),
        _show_data,
    ),
    "generate": Verb(
        "generate",
        "complete prompts with a run's tuned model",
        _generate_arguments,
        _call_generate,
        _show_generate,
    ),
    "predict": Verb(
        "predict",
        "label data (classification runs), transcribe audio (speech runs) or write targets (seq2seq runs)",
        _predict_arguments,
        lambda api, a: api.predict(a.run, a.input, a.output, a.batch_size),
        lambda a, r: print(f"wrote {r['rows']} predictions to {r['output']}") or 0,
    ),
    "export": Verb(
        "export",
        "write a run's model as safetensors, ONNX, TorchScript or GGUF (parity-checked)",
        _export_arguments,
        lambda api, a: api.export(a.run, a.format, a.output, a.quantize, a.max_drop, a.max_kl),
        _show_export,
    ),
    "push": Verb(
        "push",
        "upload a run's model with a generated model card to the hub",
        _push_arguments,
        lambda api, a: api.push(a.run, a.repo, a.dry_run, a.private, a.output),
        _show_push,
    ),
    "serve": Verb(
        "serve", "serve runs behind an OpenAI-compatible HTTP API", _serve_arguments, _call_serve, _done
    ),
    "ui": Verb(
        "ui",
        "a web page for the whole path: data, plan, train, results, try, export",
        _ui_arguments,
        _call_ui,
        _done,
    ),
    "eval": Verb(
        "evaluate",
        "score a run: loss/perplexity, ROUGE/BLEU, or classification metrics",
        _eval_arguments,
        lambda api, a: api.evaluate(
            a.run, a.data, a.baseline, a.generations, a.bench, a.judge, a.judge_model
        ),
        _show_eval,
    ),
    "report": Verb(
        "report",
        "rebuild RUN/report.html from the run folder",
        _run_argument,
        lambda api, a: api.report(a.run),
        _wrote,
    ),
    "compare": Verb(
        "compare",
        "write one HTML page comparing several runs",
        _compare_arguments,
        lambda api, a: api.compare(a.runs, a.output),
        _wrote,
    ),
    "plan": Verb(
        "plan",
        "choose the method, size and schedule that fit a time budget, planning included, on this machine (measured)",
        _plan_arguments,
        lambda api, a: api.plan(a.source, a.time, a.memory, a.model, a.task, a.output),
        _show_plan,
    ),
    "sweep": Verb(
        "sweep",
        "hyperparameter search over the config's sweep.space (Optuna)",
        _sweep_arguments,
        lambda api, a: api.sweep(a.config, a.overrides, a.trials, a.storage, a.study_name, a.time),
        _show_sweep,
    ),
    "merge": Verb(
        "merge",
        "merge a run's adapter into its base model",
        _merge_arguments,
        lambda api, a: api.merge(a.run, a.output),
        lambda a, r: (
            print(
                f"merged into {r['output']} (max logit difference vs adapter: {r['max_abs_logit_difference']:.2e})"
            )
            or 0
        ),
    ),
    "quickstart": Verb(
        "quickstart",
        "the embedded demo: SmolLM2 learns BBC headlines",
        _quickstart_arguments,
        lambda api, a: api.quickstart(a.dir, a.overrides, a.kind),
        _done,
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith", description="Fine-tune a pre-trained model on your own data."
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show the libraries' own warnings and log lines too"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    for name, verb in VERBS.items():
        verb.arguments(verbs.add_parser(name, help=verb.help, description=verb.help))
    return parser


def run(args: argparse.Namespace) -> int:
    from tunesmith import api

    verb = VERBS[args.verb]
    return verb.show(args, verb.call(api, args))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
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
