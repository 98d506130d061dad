"""The two registries, tasks and methods, looked up by name; each task and method module registers itself.

This module sits at the bottom (it imports nothing of tunesmith but the error type) so that the config
schema can validate `task:` and `method.name` against what is registered, while the tasks and methods
themselves live above the config. The built-in ones are imported on the first lookup, by name, like
plug-ins; a third-party package can add its own through the `tunesmith.plugins` entry point group.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from tunesmith.errors import TunesmithError

BUILT_IN = ("tunesmith.methods", "tunesmith.tasks")  # each registers its members when imported
TASKS: dict[str, Any] = {}
METHODS: dict[str, Any] = {}
SECTIONS: dict[str, Any] = {}  # a top-level config key a task owns -> its pydantic section class
METHOD_SECTIONS: dict[str, Any] = {}  # a key under method: a method owns (lora) -> its settings class
MOVED: dict[str, list[str]] = {}  # an old dotted key (data.audio_field) -> where it is written now
DEFAULT_TASK: list[str] = []  # the task a config gets when it names none (set by the task that claims it)
_loaded = False


def register_task(task: Any, default: bool = False) -> Any:
    """Add a task (a tunesmith.tasks.base.Task) under task.name; one line in the task's own module."""
    TASKS[task.name] = task
    if default:
        DEFAULT_TASK[:] = [task.name]
    return task


def register_section(key: str, section: Any, moved_from: tuple[str, ...] = ()) -> Any:
    """Mount a task's own config section (a pydantic model) under the top-level key `key`; `moved_from`: old
    dotted keys (e.g. data.audio_field) now written as `key`.<same name>, so a config using one is told where."""
    SECTIONS[key] = section
    for old in moved_from:
        new = f"{key}.{old.rsplit('.', 1)[-1]}"
        if new not in MOVED.setdefault(old, []):
            MOVED[old].append(new)
    return section


def register_method(method: Any) -> Any:
    """Add a method (a tunesmith.methods.Method) under method.name; one line in the method's own module. Its
    settings class, if any, is mounted under `method.<method.section>` (methods may share one: lora, dora, qlora)."""
    section, settings = getattr(method, "section", None), getattr(method, "settings", None)
    if section is not None:
        if METHOD_SECTIONS.get(section, settings) is not settings:
            raise TypeError(f"method {method.name}: section method.{section} is already another class's")
        METHOD_SECTIONS[section] = settings
    METHODS[method.name] = method
    return method


def load_plugins() -> None:
    """Import the built-in tasks and methods (and installed plug-ins) once, so that they are registered."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILT_IN:
        importlib.import_module(module)
    for plugin in entry_points(group="tunesmith.plugins"):
        plugin.load()


def lookup(table: dict[str, Any], name: str, kind: str, key: str | None) -> Any:
    """The registered entry; an unknown name gets a did-you-mean (a ValueError inside config validation)."""
    load_plugins()
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(sorted(table))}"
    message = f"unknown {kind} '{name}'; {hint}"
    if key is None:  # the config schema adds the key path itself
        raise ValueError(message)
    raise TunesmithError(f"{key}: {message}")


def get_task(name: str, key: str | None = "task") -> Any:
    return lookup(TASKS, name, "task", key)


def get_method(name: str, key: str | None = "method.name") -> Any:
    return lookup(METHODS, name, "method", key)


def task_names() -> list[str]:
    load_plugins()
    return list(TASKS)


def default_task() -> str:
    load_plugins()
    return DEFAULT_TASK[0]
