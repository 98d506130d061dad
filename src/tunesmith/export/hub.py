"""`tunesmith push RUN --repo ID`: the run's model folder plus a generated model card, uploaded with huggingface_hub."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from tunesmith.errors import TunesmithError
from tunesmith.registry import get_task
from tunesmith.run_folder import RunFolder


def _test_lines(summary) -> list[str]:
    """The test split's scores: the numbers to trust (nothing was tuned or chosen on that split)."""
    test = summary.test or {}
    before = summary.test_before or {}
    lines = []
    for name, value in test.items():
        if isinstance(value, float):
            base = f" (base model: {before[name]:.4f})" if isinstance(before.get(name), float) else ""
            lines.append(f"- test {name.replace('_', ' ')}: {value:.4f}{base}")
    return lines


def _metrics_lines(summary: dict) -> list[str]:
    lines = []
    if "validation_loss_after" in summary:
        before = summary.validation_loss_before
        lines.append(
            f"- validation loss: {summary.validation_loss_after:.4f}"
            + (f" (base model: {before:.4f})" if before is not None else "")
        )
    for name, value in (summary.validation or {}).items():
        lines.append(f"- validation {name.replace('_', ' ')}: {value:.4f}")
    if summary.train_loss is not None:
        lines.append(f"- final training loss: {summary.train_loss:.4f}")
    forgetting = summary.forgetting
    if forgetting:
        metric = forgetting["metric"]
        lines.append(
            f"- forgetting check (reference {metric}, general data not trained on): "
            f"{forgetting['before'][metric]:.4g} before, {forgetting['after'][metric]:.4g} after "
            f"({forgetting['drift_percent']:+.2f}%{', beyond the warning threshold' if forgetting['warning'] else ''})"
        )
    return lines or ["- no validation set was used; the run reports no held-out metric"]


def _eval_lines(run: RunFolder) -> list[str]:
    """`tunesmith eval` results, tuned vs base where measured, newest evaluation of each data set."""
    from tunesmith.evaluation.lm import COUNTS

    lines = []
    for path in sorted((run.path / "eval").glob("*/evaluation.json")):
        result = json.loads(path.read_text())
        if "tasks" in result:  # `eval --bench`: _benchmark_lines
            lines.extend(_benchmark_lines(result, "`tunesmith eval --bench`"))
            continue
        tuned, base = result["tuned"], result.get("baseline") or {}
        scores = [
            f"{name} {value:.4g}"
            + (f" (base {base[name]:.4g})" if isinstance(base.get(name), (int, float)) else "")
            for name, value in tuned.items()
            if isinstance(value, float) and name not in COUNTS
        ]
        lines.append(
            f"- `tunesmith eval` on {result['data']} ({result['examples']} examples): " + ", ".join(scores)
        )
    return lines


def _benchmark_lines(record: dict | None, where: str) -> list[str]:
    """lm-evaluation-harness accuracy per benchmark, base and tuned, with lm-eval's standard errors."""

    def accuracy(scores: dict) -> str:
        stderr = scores.get("acc_stderr")
        return f"{scores['acc']:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")

    lines = []
    for name, task in (record or {}).get("tasks", {}).items():
        if "acc" in task["tuned"] and "acc" in task["base"]:
            lines.append(
                f"- {name} ({task['examples']} multiple-choice questions, lm-eval {record['lm_eval_version']}, "
                f"{where}): accuracy {accuracy(task['tuned'])} (base model: {accuracy(task['base'])})"
            )
    return lines


def model_card(run: RunFolder, repo: str) -> str:
    """README.md for the hub: what it is, how it was made, how it scores, what it is for and not for."""
    summary = run.read_summary()
    config_text = run.config_file.read_text()
    report = json.loads(run.data_report.read_text()) if run.data_report.exists() else {}
    task = get_task(run.load_config().task)
    method = summary.method
    adapter = bool(summary.is_adapter)
    front = {
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": task.pipeline_tag,
        "tags": ["tunesmith", task.name, *([method] if method else [])],
    }
    base = summary.get("base_model", "")
    if base and not Path(base).exists():
        front["base_model"] = base  # a hub id; local paths mean nothing to readers
    parameters = summary.get("parameters", {})
    data_lines = [
        f"- {report.get('train_examples', '?')} training and {report.get('validation_examples', '?')} validation examples "
        f"({report.get('rows_read', '?')} rows read, {report.get('bad_rows', 0)} bad, "
        f"{report.get('duplicates_removed', 0)} duplicates removed); split: {report.get('split', 'n/a')}",
    ]
    if report.get("labels"):
        counts = report.get("train_classes", {}).get("counts", {})
        data_lines.append("- labels (training count): " + ", ".join(f"{k} ({v})" for k, v in counts.items()))
    load = (
        f'from peft import AutoPeftModel\nmodel = AutoPeftModel.from_pretrained("{repo}")'
        if adapter
        else f'from transformers import AutoModel\nmodel = AutoModel.from_pretrained("{repo}")'
    )
    sections = [
        "---\n" + yaml.safe_dump({k: v for k, v in front.items() if v}, sort_keys=False) + "---",
        f"# {repo.split('/')[-1]}",
        f"A {task.name} model fine-tuned with [tunesmith](https://pypi.org/project/tunesmith/) from `{base}` "
        f"using **{method}** ({parameters.get('trainable', '?'):,} of {parameters.get('total', '?'):,} parameters trained"
        + (", saved as an adapter over the base model" if adapter else "")
        + ").",
        "## Training data\n" + "\n".join(data_lines),
        (
            "## Evaluation\nOn the held-out test split (no checkpoint or setting was chosen on it):\n"
            + "\n".join(_test_lines(summary))
            + "\n\nOn the validation split (the best checkpoint was chosen on it, so these are optimistic):\n"
            if summary.test
            else "## Evaluation (held-out validation split)\n"
        )
        + "\n".join(
            _metrics_lines(summary)
            + _benchmark_lines(summary.benchmarks, "before and after training")
            + _eval_lines(run)
        ),
        "## Intended use\nThe task and data described above: " + task.intended_use(),
        "## Limitations\n- It was evaluated only on the validation split above, drawn from the same source as the "
        "training data; expect lower scores on data that differs from it.\n- It inherits the base model's "
        "limitations and biases; fine-tuning on a small set can also make it forget general abilities.\n"
        "- The metrics above are the run's own, not an independent benchmark.",
        "## How to use\n```python\n" + load + "\n```",
        "## Training config (tunesmith)\n```yaml\n" + config_text.rstrip() + "\n```",
        f"Trained with tunesmith {summary.get('versions', {}).get('tunesmith', '')} on "
        f"{summary.get('hardware', {}).get('platform', 'unknown hardware')} "
        f"(torch {summary.get('versions', {}).get('torch', '?')}, transformers {summary.get('versions', {}).get('transformers', '?')}).",
    ]
    return "\n\n".join(sections) + "\n"


def prepare_upload(run: RunFolder, repo: str, folder: Path) -> Path:
    """The folder that would be uploaded: the model files, README.md (model card), the tunesmith config and reports."""
    if not run.model_dir.exists() or run.read_summary().status != "finished":
        raise TunesmithError(f"{run.path}: no finished model to push; finish training (or --resume) first")
    if folder.exists():
        raise TunesmithError(f"{folder} already exists; remove it or pass --output to write elsewhere")
    shutil.copytree(run.model_dir, folder)
    (folder / "README.md").write_text(model_card(run, repo), encoding="utf-8")
    (folder / "tunesmith_config.yaml").write_text(run.config_file.read_text())
    for name in ("evaluation.json", "data_report.json", "confusion_matrix.png"):
        if (run.path / name).exists():
            shutil.copy2(run.path / name, folder / name)
    return folder


def push(
    run_dir: str | Path,
    repo: str,
    dry_run: bool = False,
    private: bool = False,
    output: str | Path | None = None,
) -> dict:
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise TunesmithError(f"--repo {repo!r}: expected OWNER/NAME, e.g. my-user/my-model")
    run = RunFolder.open(run_dir)
    folder = prepare_upload(
        run, repo, Path(output) if output else run.path / "push" / repo.replace("/", "--")
    )
    if dry_run:
        return {"folder": str(folder), "uploaded": False}
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise TunesmithError(
            f"push: HF_HUB_OFFLINE=1 is set, so nothing can be uploaded; the folder is ready at {folder} "
            "(unset HF_HUB_OFFLINE on a connected machine, or upload that folder yourself)"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo, folder_path=str(folder), commit_message=f"tunesmith: {run.path.name}"
        )
    except HfHubHTTPError as exc:
        raise TunesmithError(
            f"push: the hub refused the upload ({exc.__class__.__name__}: {str(exc).splitlines()[0]}); "
            "check HF_TOKEN (`hf auth login`) and the repo name"
        ) from None
    except OSError as exc:  # no network: connection errors are OSErrors
        raise TunesmithError(
            f"push: cannot reach the hub ({exc.__class__.__name__}); the folder is ready at {folder}; "
            "retry on a connected machine or with --dry-run"
        ) from None
    return {"folder": str(folder), "uploaded": True, "url": getattr(commit, "commit_url", None)}
