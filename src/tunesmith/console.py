"""What the user sees on the terminal, and which process says it: only rank 0 of a multi-process run prints."""

from __future__ import annotations

import logging
import os
import warnings


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


def quiet_libraries() -> None:
    """Our own progress bar and messages say what happens; library warnings stay, their chatter goes."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    # Library log lines and warnings about the libraries themselves (bitsandbytes' missing CPU kernels on
    # every import, torch deprecations) are not the user's to act on; --verbose shows them.
    warnings.filterwarnings(
        "ignore", module=r"(torch|transformers|peft|trl|accelerate|datasets|bitsandbytes)\b"
    )
    # `kernels` is what bitsandbytes asks for its CPU kernels (offline: "Skipping publisher trust check ..."), and
    # DeepSpeed says which accelerator it picked on every import.
    for library in ("bitsandbytes", "kernels", "DeepSpeed", "torch", "peft", "trl", "accelerate", "datasets"):
        logging.getLogger(library).setLevel(logging.ERROR)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
