"""Tiny in-process models and data for fast tests; nothing here reaches the network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs two pytest-xdist workers on the 2 cores: one torch thread each, not two each
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "to",
    "the",
    "park",
    "and",
    "birds",
    "sang",
    "songs",
    "about",
    "rain",
    "sun",
    "wind",
    "write",
    "headline",
    "news",
    "article",
    "market",
    "shares",
    "rose",
    "fell",
    "team",
    "won",
    "lost",
    "match",
    "election",
    "vote",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] + [
        "### Instruction:\n### Response:\n"
    ]
    backend.train_from_iterator(corpus, trainer)
    # pad == eos on purpose, as in SmolLM2: the collator must still keep the real EOS in the labels.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_model_folder(path: Path, hidden: int = 32, layers: int = 2) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def prompt_response_rows(count: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for index in range(count):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        rows.append(
            {
                "prompt": f"{prompt} {index}",
                "response": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))),
            }
        )
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def tiny_config(folder: Path, model: Path, rows: int = 40, **sections) -> dict:
    """A raw config for the tiny model on `rows` generated examples, with per-section overrides."""
    data_file = write_jsonl(folder / "train.jsonl", prompt_response_rows(rows))
    raw = {
        "model": {"name": str(model)},
        "data": {"train_file": str(data_file), "validation_ratio": 0.2, "max_length": 128},
        "method": {"name": "lora", "lora": {"r": 4, "alpha": 8}},
        "train": {
            "batch_size": 4,
            "max_steps": 6,
            "learning_rate": 1e-2,
            "precision": "fp32",
            "logging_steps": 1,
            "eval_steps": 3,
            "warmup": 0,
        },
        "eval": {"samples": 2, "max_new_tokens": 8},
        "output": {"dir": str(folder / "runs"), "cache_dir": str(folder / "cache")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


@pytest.fixture
def make_config(tmp_path, tiny_model):
    """Return a function building a raw config dict for the tiny model, with overrides per section."""

    def make(rows: int = 40, **sections) -> dict:
        return tiny_config(tmp_path, tiny_model, rows, **sections)

    return make


# -- classification --------------------------------------------------------------------------------

TOPICS = {
    "sport": ["team", "won", "lost", "match"],
    "business": ["market", "shares", "rose", "fell"],
    "politics": ["election", "vote", "news", "article"],
}


def build_bert_folder(path: Path, hidden: int = 32, layers: int = 3) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS), *map(str, range(10))]
    backend = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
    )
    BertForSequenceClassification(config).save_pretrained(path)  # a body with some (pretrained) head
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_bert_folder(tmp_path_factory.mktemp("tiny-bert"))


def topic_rows(count: int, seed: int = 0) -> list[dict]:
    """Short texts whose topic words give the label away, plus filler words: a tiny model learns them fast."""
    import random

    rng = random.Random(seed)
    names = sorted(TOPICS)
    filler = ["the", "a", "while", "and", "about", "to", "on"]
    rows = []
    for index in range(count):
        label = names[index % len(names)]
        words = [rng.choice(TOPICS[label]) for _ in range(3)] + [rng.choice(filler) for _ in range(3)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" {index % 10}", "label": label})
    return rows


def classification_config(folder: Path, model: Path, task: str, train_file, **sections) -> dict:
    raw = {
        "task": task,
        "model": {"name": str(model)},
        "data": {"train_file": str(train_file), "validation_ratio": 0.25, "max_length": 32},
        "method": {"name": "full"},
        "train": {
            "batch_size": 8,
            "epochs": 3,
            "learning_rate": 5e-3,
            "precision": "fp32",
            "logging_steps": 2,
            "warmup": 0,
            "metric": "accuracy",
        },
        "eval": {"batch_size": 16},
        "output": {"dir": str(folder / "runs"), "cache_dir": str(folder / "cache")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def synthesize_spoken_digits(folder: Path, voices, variants, speeds, pitches) -> Path:
    """A spoken-digit set in class folders: espeak-ng says each digit in every voice, variant, speed, pitch."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed; `make setup` installs it (apt-get install espeak-ng)")
    for digit, word in enumerate(DIGIT_WORDS):
        target = folder / str(digit)
        target.mkdir(parents=True, exist_ok=True)
        for voice in voices:
            for variant in variants:
                for speed in speeds:
                    for pitch in pitches:
                        name = f"{voice}-{variant}-{speed}-{pitch}.wav"
                        subprocess.run(
                            [
                                "espeak-ng",
                                "-v",
                                f"{voice}+{variant}",
                                "-s",
                                str(speed),
                                "-p",
                                str(pitch),
                                "-w",
                                str(target / name),
                                word,
                            ],
                            check=True,
                        )
    return folder


def build_whisper_classifier_folder(path: Path, seconds: float = 1.0) -> Path:
    """A tiny Whisper encoder classifier (log-mel input) with a feature extractor cut to `seconds`."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    extractor = WhisperFeatureExtractor(feature_size=40, chunk_length=int(seconds))
    torch.manual_seed(0)
    config = WhisperConfig(
        num_mel_bins=40,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        max_source_positions=extractor.nb_max_frames // 2,
        classifier_proj_size=64,
        num_labels=2,
    )
    WhisperForAudioClassification(config).save_pretrained(path)
    extractor.save_pretrained(path)
    return path


# The slowest tests, with their seconds in a two-worker run (`make test` prints the 30 slowest; 2026-12-04, a 2-core
# host under load 4). pytest-xdist's worksteal hands each worker a contiguous share of the collection and lets an
# idle worker steal from the end of another's: a slow test collected last becomes the run's tail, alone on one core
# (the elastic test ran out its 300 s limit that way in CI). So the slow tests go first, shared between the workers
# by their seconds; the rest keep their order.
SLOWEST = {
    "tests/test_faults.py::test_ray_restart_after_a_killed_worker_resumes_to_the_uninterrupted_weights": 186,
    "tests/test_integration_smollm2.py::test_gguf_model_converts_trains_and_generates": 169,
    "tests/test_distributed.py::test_two_nodes_on_one_machine_match_two_processes_on_one_node": 141,
    "tests/test_distributed.py::test_two_processes_match_one_at_the_same_global_batch": 133,
    "tests/test_distributed.py::test_deepspeed_zero2_and_zero3_on_two_cpu_processes_follow_one_process": 96,
    "tests/test_ui.py::test_the_whole_path_in_a_real_browser_with_the_network_blocked": 79,
    "tests/test_sweep.py::test_two_workers_share_one_study": 78,
    "tests/test_preference_train.py::test_two_processes_follow_one_process_losses_and_rewards": 77,
    "tests/test_faults.py::test_elastic_restart_after_a_killed_worker_ends_with_the_uninterrupted_weights": 73,
    "tests/test_benchmarks.py::test_bench_scores_equal_lm_evals_own_cli_for_base_and_tuned": 72,
    "tests/test_media_classification.py::test_whisper_encoder_learns_spoken_digits": 57,
    "tests/test_sweep.py::test_sweep_prunes_and_its_best_config_reproduces_the_best_trial": 48,
    "tests/test_sweep.py::test_a_killed_sweep_resumes_and_retries_the_interrupted_point": 41,
    "tests/test_launch_files.py::test_accelerate_config_on_one_node_trains_like_one_process": 39,
    "tests/test_autopilot.py::test_a_probe_measures_a_real_short_run_in_its_own_process": 39,
    "tests/test_autopilot.py::test_a_features_probe_answers_each_validation_example_as_its_run_scored_them": 37,
    "tests/test_faults.py::test_sigkill_during_checkpoint_write_then_resume_gives_identical_weights": 33,
}


def pytest_collection_modifyitems(config, items):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    slow = sorted((item for item in items if item.nodeid in SLOWEST), key=lambda item: -SLOWEST[item.nodeid])
    if workers < 2 or not slow:
        return
    fronts: list[list] = [[] for _ in range(workers)]
    for item in slow:  # each to the worker with the fewest seconds so far
        min(fronts, key=lambda front: sum(SLOWEST[i.nodeid] for i in front)).append(item)
    rest = [item for item in items if item.nodeid not in SLOWEST]
    ordered, remaining = [], len(items)
    for index, front in enumerate(
        fronts
    ):  # worksteal's first share: what is left over the workers not yet served
        share = remaining // (workers - index)
        take = max(share - len(front), 0)
        ordered += front + rest[:take]
        rest = rest[take:]
        remaining -= len(front) + take
    items[:] = ordered + rest
