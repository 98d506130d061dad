"""Adapt a speech model to an accent it does not know, with tunesmith, on espeak-ng speech.

No pretrained speech model installs offline here, so the "pretrained" model is built honestly from scratch: a small
Whisper-architecture model (random weights) is trained with `tunesmith train` on spoken digit strings in some
espeak-ng English voices (the old accents), then fine-tuned with `tunesmith train` to a held-out voice (the new
accent). Word error rate is measured with `tunesmith eval --baseline` on held-out clips of the new accent (before =
the model trained on the old accents, after = fine-tuned) and on held-out clips of the old accents (forgetting).

    .venv/bin/python bench/speech_accent.py [--workdir /tmp/speech-accent] [--quick]

Prints the figures and writes them to bench/results/speech_accent.json (and .md).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import time
from pathlib import Path

from results_file import Provenance, write_results

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPECIAL = [
    "<|startoftranscript|>",
    "<|en|>",
    "<|transcribe|>",
    "<|translate|>",
    "<|notimestamps|>",
]
OLD_VOICES = ["en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan"]
NEW_VOICE = "en-gb-scotland"
VARIANTS = ["m1", "m3", "f2", "f4"]
SECONDS = 2  # the model's window: three digit words at 140-190 words a minute take 0.9-1.9 s


def phrase(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(3))


def synthesize(folder: Path, voices: list[str], count: int, seed: int) -> Path:
    """`count` clips of three spoken digits, each in a random voice/variant, speed and pitch; a JSONL table."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        text, voice, variant = phrase(rng), rng.choice(voices), rng.choice(VARIANTS)
        name = f"{i:04d}.wav"
        command = ["espeak-ng", "-v", f"{voice}+{variant}", "-s", str(rng.randint(140, 190))]
        command += ["-p", str(rng.randint(30, 70)), "-w", str(folder / name), text]
        subprocess.run(command, check=True)
        to_16k(folder / name)
        rows.append({"audio": name, "text": text, "voice": f"{voice}+{variant}"})
    table = folder / "clips.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return table


def to_16k(path: Path) -> None:
    """espeak-ng writes 22.05 kHz; resampled once here so that training does not resample every clip every epoch
    (tunesmith would, and count it in the data report)."""
    import numpy as np
    import soundfile
    from scipy.signal import resample_poly

    samples, rate = soundfile.read(str(path), dtype="float32")
    divisor = np.gcd(rate, 16000)
    soundfile.write(
        str(path), resample_poly(samples, 16000 // divisor, rate // divisor).astype(np.float32), 16000
    )


def build_model(path: Path, width: int) -> Path:
    """A Whisper-architecture model with random weights, a byte-level BPE tokenizer over the digit words plus
    Whisper's special tokens, and a 3 s feature extractor with 40 mel bins."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([" ".join(WORDS), *[f" {w}" for w in WORDS]] * 5, trainer)
    path.mkdir(parents=True)
    backend.model.save(str(path))
    tokenizer = WhisperTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ["<|endoftext|>", *SPECIAL]}
    extractor = WhisperFeatureExtractor(feature_size=40, chunk_length=SECONDS)
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=40,
        d_model=width,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * width,
        decoder_ffn_dim=2 * width,
        max_source_positions=extractor.nb_max_frames // 2,
        max_target_positions=32,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=[],
        begin_suppress_tokens=[],
        apply_spec_augment=False,
        dropout=0.0,
    )
    WhisperForConditionalGeneration(config).save_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=True,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    extractor.save_pretrained(path)
    return path


def config(workdir: Path, model: Path, table: Path, name: str, **train) -> dict:
    return {
        "task": "speech-recognition",
        "model": {"name": str(model)},
        "data": {"train_file": str(table), "validation_ratio": 0.1},
        "method": {"name": "full"},
        # basic, not english: Whisper's English normalizer writes spoken digit strings as one number ("seven
        # eight one" -> "781"), which would make every clip one word and WER a per-clip error rate.
        "speech": {"language": "en", "max_new_tokens": 10, "normalizer": "basic"},
        "train": {
            "batch_size": 32,
            "precision": "fp32",
            "logging_steps": 10,
            "scheduler": "linear",
            "weight_decay": 0.01,
            "load_best": False,
            "num_threads": 1,  # measured: 0.45 s a step on one thread, 1.7 s on two, on this shared 2-core host
            **train,
        },
        "eval": {"batch_size": 32, "train_generations": 16, "generations": 16, "before_training": False},
        "output": {"dir": str(workdir / "runs"), "name": name, "cache_dir": str(workdir / "cache")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/speech-accent")
    parser.add_argument("--quick", action="store_true", help="a few clips and steps: checks the script runs")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--pretrain-epochs", type=float, default=30)
    parser.add_argument("--finetune-epochs", type=float, default=15)
    args = parser.parse_args()

    from tunesmith import api
    from tunesmith.config import config_from_dict

    provenance, started = Provenance.begin(), time.time()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    sizes = {"old_train": 600, "old_test": 80, "new_train": 120, "new_test": 80}
    if args.quick:
        sizes = {k: 24 for k in sizes}
        args.pretrain_epochs = args.finetune_epochs = 1
    old_train = synthesize(workdir / "old_train", OLD_VOICES, sizes["old_train"], seed=1)
    old_test = synthesize(workdir / "old_test", OLD_VOICES, sizes["old_test"], seed=2)
    new_train = synthesize(workdir / "new_train", [NEW_VOICE], sizes["new_train"], seed=3)
    new_test = synthesize(workdir / "new_test", [NEW_VOICE], sizes["new_test"], seed=4)
    synthesized = time.time()
    scratch = build_model(workdir / "scratch", args.width)

    pretrain = config(
        workdir,
        scratch,
        old_train,
        "old-accents",
        epochs=args.pretrain_epochs,
        learning_rate=2e-3,
        warmup=0.05,
    )
    pretrained = api.train(config_from_dict(pretrain))
    pretrained_seconds = time.time() - synthesized

    finetune = config(
        workdir,
        Path(pretrained["run_dir"]) / "model",
        new_train,
        "new-accent",
        epochs=args.finetune_epochs,
        learning_rate=5e-4,
        warmup=0.1,
    )
    finetune["eval"]["reference"] = str(old_test)  # the forgetting check: old-accent WER before and after
    finetune["eval"]["forgetting_threshold"] = 1.0  # warn when it rises by more than one percentage point
    tuned = api.train(config_from_dict(finetune))
    new_accent = api.evaluate(tuned["run_dir"], data=new_test, baseline=True)
    old_accent = api.evaluate(tuned["run_dir"], data=old_test, baseline=True)

    figures = {
        "new_accent_wer_before": new_accent["baseline"]["wer"],
        "new_accent_wer_after": new_accent["tuned"]["wer"],
        "new_accent_cer_before": new_accent["baseline"]["cer"],
        "new_accent_cer_after": new_accent["tuned"]["cer"],
        "old_accent_wer_before": old_accent["baseline"]["wer"],
        "old_accent_wer_after": old_accent["tuned"]["wer"],
        "new_accent_clips": new_accent["examples"],
        "old_accent_clips": old_accent["examples"],
    }
    record = {
        "figures": figures,
        "data": {
            "sentences": "three digit words (zero..nine) per clip, drawn at random",
            "old_voices": [f"{v}+{{{','.join(VARIANTS)}}}" for v in OLD_VOICES],
            "new_voice": f"{NEW_VOICE}+{{{','.join(VARIANTS)}}}",
            "clips": sizes,
            "speed_wpm": "140-190",
            "pitch": "30-70",
        },
        "normalizer": "basic (Whisper's BasicTextNormalizer: lower case, punctuation removed)",
        "model": f"Whisper architecture from scratch: d_model {args.width}, 2+2 layers, 40 mel bins, {SECONDS} s window",
        "pretrain": {
            "epochs": args.pretrain_epochs,
            "steps": pretrained["global_step"],
            "train_seconds": pretrained["train_seconds"],
        },
        "finetune": {
            "epochs": args.finetune_epochs,
            "steps": tuned["global_step"],
            "train_seconds": tuned["train_seconds"],
            "forgetting": tuned.get("forgetting"),
        },
        "seconds": {
            "synthesis": round(synthesized - started, 1),
            "pretrain": round(pretrained_seconds, 1),
            "total": round(time.time() - started, 1),
        },
    }
    print(json.dumps(figures, indent=2))
    print(
        f"new accent ({NEW_VOICE}): WER {figures['new_accent_wer_before']:.3f} -> {figures['new_accent_wer_after']:.3f}; "
        f"old accents: WER {figures['old_accent_wer_before']:.3f} -> {figures['old_accent_wer_after']:.3f} "
        f"({record['seconds']['total']:.0f} s in all)"
    )
    if not args.quick:
        write_results("speech_accent", record, provenance)  # with host, load, date, command and versions


if __name__ == "__main__":
    main()
