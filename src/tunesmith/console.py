"""What the user sees on the terminal, and which process says it: only rank 0 of a multi-process run prints."""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def say(message: str) -> None:
    """Print once, from rank 0."""
    if is_main():
        print(message, flush=True)
