"""The structure stays as docs/architecture.md draws it: task names only in tasks/, floors that import
downwards only, one table of CLI verbs in sync with the API, help text on every option."""

from __future__ import annotations

import argparse
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith import api, cli
from tunesmith.registry import task_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tunesmith"


def _lines_outside_tasks():
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".j2", ".html"} and "tasks" not in path.parts:
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                yield f"{path.relative_to(ROOT)}:{number}: {line.strip()}", line


def test_the_first_round_task_names_appear_only_inside_tasks():
    # The issue's own check: grep -rn '"causal-lm"\|"text-classification"\|...' src/tunesmith
    names = ("causal-lm", "text-classification", "image-classification", "audio-classification")
    pattern = re.compile("|".join(f'"{name}"' for name in names))
    assert [where for where, line in _lines_outside_tasks() if pattern.search(line)] == []


def test_no_code_outside_tasks_compares_or_looks_up_a_task_by_a_literal_name():
    names = "|".join(re.escape(name) for name in task_names())
    pattern = re.compile(rf'(==|!=|get_task\(|\.task\s+in\s+\(?)\s*"({names})"')
    assert [where for where, line in _lines_outside_tasks() if pattern.search(line)] == []


def _lint_imports(source: Path, cwd: Path) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).with_name("lint-imports")
    env = {"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(linter)], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_the_layers_contract_holds_and_catches_an_upward_import(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "src" / "tunesmith", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    kept = _lint_imports(tmp_path / "src", tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    readers = tmp_path / "src" / "tunesmith" / "data" / "readers.py"
    readers.write_text(
        readers.read_text() + "\nfrom tunesmith import api  # noqa: E402  (deliberately upward)\n"
    )
    # a task's route module may use the floor below tasks (tunesmith.http), never the server above it
    routes = tmp_path / "src" / "tunesmith" / "tasks" / "token_classification" / "routes.py"
    routes.write_text(routes.read_text() + "\nfrom tunesmith.serving import app  # noqa: E402\n")
    broken = _lint_imports(tmp_path / "src", tmp_path)
    assert broken.returncode != 0
    assert "tunesmith.data.readers -> tunesmith.api" in broken.stdout
    assert "tunesmith.tasks.token_classification.routes -> tunesmith.serving.app" in broken.stdout


def test_the_http_floor_sits_below_tasks_so_a_task_package_can_hold_its_routes():
    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    floors = [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]
    position = {name: depth for depth, layer in enumerate(floors) for name in layer}
    assert position["tunesmith.serving"] < position["tunesmith.tasks"] < position["tunesmith.http"]


def test_each_tasks_route_module_and_report_section_live_in_its_own_package():
    """A task adds its HTTP route and its report.html section with its package alone: serving/ keeps only the
    chat/completions routes every Generator shares, and report/ lists no task's section."""
    from tunesmith.registry import SECTIONS, get_task

    for name in task_names():
        task = get_task(name)
        package = type(task).__module__
        routes = task.routes()
        if routes is not None:
            assert routes.__name__ == f"{package}.routes", name
            assert routes.GROUP and routes.PATHS and routes.HANDLE and callable(routes.add_routes), name
        section = task.report_section()
        if section is not None:
            assert section == PACKAGE / "tasks" / package.rsplit(".", 1)[-1] / "report.html.j2", name
    assert [p.name for p in (PACKAGE / "serving").glob("routes_*.py")] == ["routes_generation.py"]
    pages = "".join(p.read_text() for p in (PACKAGE / "report" / "templates").glob("*.j2"))
    read = [key for key in SECTIONS if f"cfg.{key}" in pages or f"section({key!r}" in pages]
    assert SECTIONS and read == []  # no task's config section is read by the shared page


def test_the_server_refuses_a_run_whose_handle_is_not_what_its_routes_answer_through():
    from types import SimpleNamespace

    from tunesmith.errors import TunesmithError
    from tunesmith.http.context import ServedModel
    from tunesmith.serving.app import route_groups
    from tunesmith.tasks.token_classification import routes

    served = ServedModel("ner", "token-classification", None, routes=routes, handle=object())
    with pytest.raises(TunesmithError, match="ner .token-classification. loads as a object, not the Tagger"):
        route_groups(SimpleNamespace(models={"ner": served}))


def test_every_verb_calls_an_api_function_and_every_api_function_has_a_verb():
    public = {
        name
        for name, value in vars(api).items()
        if inspect.isfunction(value) and value.__module__ == api.__name__ and not name.startswith("_")
    }
    # `tunesmith ui` is the one verb above the API (the page calls the API's functions): tunesmith.ui.serve
    called = {verb.function for verb in cli.VERBS.values()} - {"ui"}
    assert called <= public  # no verb names a function the API lacks
    assert public - called == {"serve_app"}  # the one API call with no verb: the app object for ASGI hosts


def _options(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _options(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_of_every_verb_has_help_text():
    parser = cli._parser()
    missing = [f"{path}: {action.dest}" for path, action in _options(parser, "tunesmith") if not action.help]
    assert missing == []
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(verbs.choices) == set(cli.VERBS)


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_each_verb_explains_itself(verb, capsys):
    with pytest.raises(SystemExit):
        cli.main([verb, "--help"])
    assert cli.VERBS[verb].help in " ".join(capsys.readouterr().out.split())


def task_packages() -> list[str]:
    return sorted(p.parent.name for p in (PACKAGE / "tasks").glob("*/__init__.py"))


def imported_modules(source: str) -> set[str]:
    """Every tunesmith module a source file imports (at the top or inside a function)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("tunesmith.")}


def foreign_task_imports(package: str, source: str, packages: list[str]) -> list[str]:
    others = [p for p in packages if p != package]
    return sorted(
        name
        for name in imported_modules(source)
        for other in others
        if name.startswith(f"tunesmith.tasks.{other}")
    )


def test_every_registered_task_lives_in_its_own_package():
    from tunesmith.registry import get_task

    modules = {type(get_task(name)).__module__ for name in task_names()}
    assert modules == {f"tunesmith.tasks.{package}" for package in task_packages()}


def test_no_task_package_imports_another_task_package():
    packages = task_packages()
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in packages
        for path in sorted((PACKAGE / "tasks" / package).rglob("*.py"))
        for name in foreign_task_imports(package, path.read_text(encoding="utf-8"), packages)
    ]
    assert found == []
    # the check itself sees both spellings of an import, at the top and inside a function
    sneaky = (
        "from tunesmith.tasks import causal_lm\ndef f():\n    from tunesmith.tasks.seq2seq.run import x\n"
    )
    assert foreign_task_imports("preference", sneaky, packages) == [
        "tunesmith.tasks.causal_lm",
        "tunesmith.tasks.seq2seq.run",
        "tunesmith.tasks.seq2seq.run.x",
    ]
