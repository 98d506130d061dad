"""Checkpoints that cannot be half-written: staged, checksummed in a manifest, fsynced, then renamed into place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

MANIFEST = "manifest.json"
STAGING = ".partial"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, step: int) -> None:
    files = {
        str(p.relative_to(folder)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    temporary = folder / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps({"step": step, "files": files}, indent=1))
    os.replace(temporary, folder / MANIFEST)


def fsync_path(path: Path) -> None:
    """Flush a file's bytes, or a directory's entries, from the page cache to the disk."""
    if path.is_dir() and os.name == "nt":
        return  # Windows cannot open a directory to flush it; NTFS journals renames itself
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def commit(staged: Path, final: Path, step: int) -> None:
    """Make a staged checkpoint durable, then give it its final name; only then may older ones be rotated.

    A rename is atomic but not durable: without the fsyncs a power cut can leave `final` in place with
    files the disk never received (empty or short), while rotation has already deleted the older ones.
    """
    write_manifest(staged, step)
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        fsync_path(path)
    # Each folder's entries (the names of the files just flushed), deepest first, the checkpoint's own last.
    for folder in [*sorted((p for p in staged.rglob("*") if p.is_dir()), reverse=True), staged]:
        fsync_path(folder)
    shutil.rmtree(final, ignore_errors=True)  # a re-save of the same step (after a resume)
    os.replace(staged, final)
    fsync_path(final.parent)  # the rename itself is on disk: the checkpoint survives a power cut from here


def verify(folder: Path) -> str | None:
    """None when every file matches the manifest, else the reason the checkpoint cannot be trusted."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return "no manifest (the write never finished)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return "unreadable manifest"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, expected {expected['bytes']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} fails its checksum"
    return None


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[-1])


def checkpoints_newest_first(root: Path) -> list[Path]:
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=checkpoint_step, reverse=True)


def latest_valid(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that passes its manifest, and one line for each newer one that was skipped."""
    skipped = []
    for folder in checkpoints_newest_first(root):
        problem = verify(folder)
        if problem is None:
            return folder, skipped
        skipped.append(f"{folder.name}: {problem}; skipped")
    return None, skipped


def fault_point(name: str, step: int) -> None:
    """Fault injection for tests (TUNESMITH_FAULT=name:step): die with SIGKILL right here, like a power cut."""
    if os.environ.get("TUNESMITH_FAULT") == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
