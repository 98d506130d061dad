"""Self-replay: the base model's own answers to general prompts, generated once before training and cached.

Training on a little of what the base model itself says keeps the tuned model near it on everything the task's
data does not touch (replay of the model's own generations works where the original data is unavailable; see
docs/evaluation.md). The answers are generated with the run's chat template, so they are trained exactly as the
task's rows are (loss on the answer only), and cached under the model's fingerprint, the prompts and the
generation settings: a second run, or a sweep, reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from tunesmith.config import Config, ReplaySettings
from tunesmith.console import say
from tunesmith.data.prepare import encode, tokenizer_fingerprint
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.data.validate import Example
from tunesmith.errors import TunesmithError
from tunesmith.evaluation.generation import generate_answers
from tunesmith.models.loading import load_model, model_fingerprint

BUILTIN_PROMPTS = Path(__file__).with_name("replay_prompts.txt")
CACHE_VERSION = "1"


def replay_prompts(settings: ReplaySettings, train: list[Example]) -> list[str]:
    """The prompts self-replay answers: built-in, the training rows' own first user turns, or a .txt file."""
    if settings.prompts == "train":
        prompts = [next((m[1] for m in e.messages if m[0] == "user"), None) for e in train]
        prompts = list(dict.fromkeys(p for p in prompts if p))
        if not prompts:
            raise TunesmithError(
                "data.replay.prompts: train, but the training rows have no user turns (plain text); "
                "use builtin or a .txt file of prompts"
            )
    else:
        path = BUILTIN_PROMPTS if settings.prompts == "builtin" else Path(settings.prompts)
        if not path.is_file():
            raise TunesmithError(
                f"data.replay.prompts: {path} not found; give builtin, train or a .txt file (one prompt per line)"
            )
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise TunesmithError(f"data.replay.prompts: {path} has no prompts")
    return prompts[: settings.max_prompts]


def generation_settings(settings: ReplaySettings, seed: int, batch_size: int) -> dict:
    return {
        "max_new_tokens": settings.max_new_tokens,
        "batch_size": batch_size,  # a sampled answer depends on the batch it was drawn in
        "temperature": settings.temperature,
        "seed": seed,
        "sampling": "seeded torch.manual_seed before generate()" if settings.temperature > 0 else "greedy",
    }


def cache_key(model_path: str, renderer: Renderer, prompts: list[str], generation: dict) -> str:
    payload = [CACHE_VERSION, model_fingerprint(model_path), tokenizer_fingerprint(renderer.tokenizer)]
    payload += [renderer.kind, generation, prompts]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:24]


def self_replay(
    cfg: Config, model_path: str, renderer: Renderer, train: list[Example], cache_dir: Path | None
) -> tuple[list[Example], dict]:
    """The replay pool (one conversation per prompt whose answer ended) and what the data report says of it."""
    settings = cfg.data.replay
    prompts = replay_prompts(settings, train)
    generation = generation_settings(settings, cfg.data.seed, cfg.eval.batch_size)
    system = (("system", cfg.data.system_prompt),) if cfg.data.system_prompt else ()
    conversations = [(*system, ("user", prompt)) for prompt in prompts]
    key = cache_key(model_path, renderer, prompts, generation)
    cache_file = cache_dir / "replay" / f"{key}.json" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        stored = json.loads(cache_file.read_text(encoding="utf-8"))
        answers, seconds, hit = [tuple(a) for a in stored["answers"]], stored["seconds"], True
    else:
        answers, seconds = _generate(cfg, model_path, renderer, conversations, generation)
        hit = False
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"answers": answers, "seconds": seconds, **generation}))
            temporary.replace(cache_file)  # ranks may write the same key at once: each lands whole
    ended_answers = [
        Example(f"self-replay:{index + 1}", (*conversation, ("assistant", text)))
        for index, (conversation, (text, ended)) in enumerate(zip(conversations, answers, strict=True))
        if ended and text.strip()
    ]
    # An answer whose row is over data.max_length would be dropped (or cut) when the epoch is tokenized: the
    # replay share drawn would not be the share trained. Left out here, and counted.
    mask = LossMask.of(cfg.data)
    pool = [e for e in ended_answers if len(encode(e, renderer, mask)["input_ids"]) <= cfg.data.max_length]
    too_long = len(ended_answers) - len(pool)
    report = {
        "source": "self: the base model's answers",
        "prompts": settings.prompts,
        "prompts_answered": len(prompts),
        "answers_kept": len(pool),
        "left_out_unfinished_or_empty": len(prompts) - len(ended_answers),
        "left_out_over_max_length": too_long,
        "generation": generation,
        "generation_seconds": seconds,
        "cache": {"key": key, "hit": hit},
    }
    say(
        f"data: self-replay: {len(pool)} of {len(prompts)} base-model answers kept "
        + (
            f"(reused from the cache, key {key})"
            if hit
            else f"(generated in {seconds:.0f}s, cached as {key})"
        )
        + (
            f"; {len(prompts) - len(ended_answers)} did not end within {settings.max_new_tokens} tokens"
            if len(ended_answers) < len(prompts)
            else ""
        )
        + (
            f"; {too_long} ended but are over data.max_length={cfg.data.max_length} tokens"
            if too_long
            else ""
        )
    )
    if not pool:
        raise TunesmithError(
            f"data.replay: none of the base model's {len(prompts)} answers ended within max_new_tokens="
            f"{settings.max_new_tokens} and fit data.max_length={cfg.data.max_length}; raise "
            "data.replay.max_new_tokens (or data.max_length) or give a replay file as data.replay.source"
        )
    return pool, report


def _generate(cfg: Config, model_path: str, renderer: Renderer, conversations, generation: dict):
    import time

    started = time.time()
    model = load_model(model_path, cfg.model)
    torch.manual_seed(generation["seed"])
    answers = generate_answers(
        model,
        renderer,
        conversations,
        generation["max_new_tokens"],
        generation["batch_size"],
        generation["temperature"],
    )
    del model
    return [list(answer) for answer in answers], round(time.time() - started, 1)
