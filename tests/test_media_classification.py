"""Image and audio classification on real small data (scikit-learn digits, espeak-ng speech), and bad files."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    build_whisper_classifier_folder,
    classification_config,
    synthesize_spoken_digits,
    write_jsonl,
)
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.data.labelled import check_labelled
from tunesmith.errors import TunesmithError


def write_digits(folder, count=None):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(list(zip(digits.images, digits.target, strict=True))[:count]):
        target = folder / str(label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15).astype(np.uint8), mode="L").save(target / f"{index}.png")
    return folder


def build_vit_folder(path):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
    )
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5], image_std=[0.5]).save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return build_vit_folder(tmp_path_factory.mktemp("vit"))


def _image_cfg(tmp_path, vit, source, **sections):
    return classification_config(tmp_path, vit, "image-classification", source, **sections)


def _checked(raw: dict, modality: str):
    """The config's data read as training reads it (its data and classification sections)."""
    cfg = config_from_dict(raw)
    return check_labelled(cfg.data, cfg.section("classification"), modality)


def test_bad_image_files_are_named(tmp_path, vit):
    folder = write_digits(tmp_path / "digits", count=40)
    (folder / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "3" / "notes.txt").write_text("not an image")
    checked = _checked(_image_cfg(tmp_path, vit, folder), "image")
    assert len(checked.problems) == 2
    assert any(p.startswith(f"{folder}/3/broken.png: unreadable image") for p in checked.problems)
    assert any(p.startswith(f"{folder}/3/notes.txt: not a image file") for p in checked.problems)
    with pytest.raises(TunesmithError, match="2 bad row"):
        api.train(config_from_dict(_image_cfg(tmp_path, vit, folder)))


def test_image_table_paths_are_relative_to_the_table(tmp_path, vit):
    folder = write_digits(tmp_path / "digits", count=30)
    rows = [
        {"path": str(p.relative_to(tmp_path)), "label": p.parent.name} for p in sorted(folder.rglob("*.png"))
    ]
    rows.append({"path": "digits/9/missing.png", "label": "9"})
    rows.append({"file": "x.png", "label": "1"})
    table = write_jsonl(tmp_path / "images.jsonl", rows)
    raw = _image_cfg(tmp_path, vit, table, data={"on_error": "skip"})
    checked = _checked(raw, "image")
    assert checked.problems == [
        f"{table}:31: file not found: {tmp_path}/digits/9/missing.png",
        f"{table}:32: missing file field 'path' (fields present: file, label); set classification.file_field",
    ]
    assert checked.report["train_examples"] + checked.report["validation_examples"] == 30


def test_vit_learns_handwritten_digits_from_an_image_folder(tmp_path, digits, vit):
    raw = _image_cfg(
        tmp_path,
        vit,
        digits,
        data={"validation_ratio": 0.2, "test_ratio": 0},  # validation alone: the counts below
        train={
            "epochs": 12,
            "learning_rate": 3e-3,
            "batch_size": 32,
            "eval_steps": 10_000,
            "save_steps": 10_000,
            "warmup": 0.1,
        },
    )
    summary = api.train(config_from_dict(raw))
    # 10 classes (chance 10%); 95%+ with two torch threads, 94.7% with one (the sums' order changes the numbers)
    assert summary["validation"]["accuracy"] >= 0.93, summary["validation"]
    assert summary["examples_per_second"] > 0
    folder = write_digits(tmp_path / "new", count=20)
    result = api.predict(summary["run_dir"], folder, tmp_path / "digits.csv")
    assert result["rows"] == 20
    report = json.loads((tmp_path / "runs" / "run" / "data_report.json").read_text())
    assert report["train_classes"]["counts"]["0"] == 142  # 178 zeros, 20% held out


def test_whisper_encoder_learns_spoken_digits(tmp_path):
    data = synthesize_spoken_digits(
        tmp_path / "spoken",
        voices=["en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan"],
        variants=["m1", "f2", "m3"],
        speeds=[140, 190],
        pitches=[35, 70],
    )
    model = build_whisper_classifier_folder(tmp_path / "whisper")
    raw = classification_config(
        tmp_path,
        model,
        "audio-classification",
        data,
        data={"validation_ratio": 0.2},
        classification={"clip_seconds": 1.0},
        train={
            "epochs": 20,
            "learning_rate": 3e-3,
            "batch_size": 32,
            "eval_steps": 10_000,
            "save_steps": 10_000,
            "warmup": 0.1,
        },
    )
    summary = api.train(config_from_dict(raw))
    assert summary["validation"]["accuracy"] >= 0.8, summary["validation"]


def test_bad_audio_files_are_named(tmp_path):
    data = synthesize_spoken_digits(
        tmp_path / "spoken", voices=["en-us"], variants=["m1"], speeds=[160], pitches=[50]
    )
    (data / "4" / "empty.wav").write_bytes(b"")
    (data / "5" / "noise.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    model = build_whisper_classifier_folder(tmp_path / "whisper")
    checked = _checked(classification_config(tmp_path, model, "audio-classification", data), "audio")
    assert sorted(p.split(": ")[0] for p in checked.problems) == [
        f"{data}/4/empty.wav",
        f"{data}/5/noise.wav",
    ]
    assert all("unreadable audio" in p or "empty audio" in p for p in checked.problems)


def test_audio_is_resampled_and_cut_or_padded(tmp_path):
    import random

    import soundfile

    from tunesmith.data.media import load_audio

    tone = np.sin(np.linspace(0, 2 * np.pi * 440, 22050 * 2)).astype(np.float32)  # 2 s at 22.05 kHz
    soundfile.write(tmp_path / "tone.wav", np.stack([tone, tone], axis=1), 22050)  # stereo
    clip = load_audio(str(tmp_path / "tone.wav"), 16000, 1.0)
    assert clip.shape == (16000,) and clip.dtype == np.float32
    assert abs(clip).max() > 0.9  # a full-scale tone survives resampling
    window = load_audio(str(tmp_path / "tone.wav"), 16000, 1.0, random.Random(0))
    assert window.shape == (16000,)
    padded = load_audio(str(tmp_path / "tone.wav"), 16000, 3.0)
    assert padded.shape == (48000,) and not padded[33000:].any()  # 2 s of sound, then zeros


def test_image_augmentation_keeps_size_and_is_seeded():
    import random

    from PIL import Image

    from tunesmith.data.media import augment_image

    image = Image.fromarray((np.arange(256).reshape(16, 16) % 255).astype(np.uint8), mode="L")
    first = augment_image(image, random.Random(1))
    again = augment_image(image, random.Random(1))
    assert first.size == image.size and np.array_equal(np.asarray(first), np.asarray(again))
    assert not all(
        np.array_equal(np.asarray(augment_image(image, random.Random(s))), np.asarray(image))
        for s in range(5)
    )


def test_a_vit_run_resumes_and_keeps_its_best_checkpoint_with_the_weights_it_saved(tmp_path, vit):
    """transformers 5 saves ViT's weights under their original names (vit.encoder.layer.*) while the Trainer
    reloads checkpoints with a plain load_state_dict: without care a resume or the best-checkpoint reload keeps
    the weights in memory, silently. Checkpoints are written under the model's own names."""
    import safetensors.torch
    import torch
    from transformers import AutoModelForImageClassification

    from test_train import StopAt

    folder = write_digits(tmp_path / "digits", count=60)
    raw = _image_cfg(
        tmp_path, vit, folder, train={"max_steps": 6, "eval_steps": 2, "save_steps": 2, "learning_rate": 3e-3}
    )
    whole = api.train(config_from_dict(raw, overrides=["output.name=whole"]))
    stopped = api.train(config_from_dict(raw, overrides=["output.name=split"]), callbacks=[StopAt(2)])
    assert stopped["status"] == "stopped" and stopped["global_step"] == 2
    resumed = api.train(config_from_dict(raw, overrides=["output.name=split"]), resume=True)
    assert resumed["global_step"] == 6

    def weights(summary):
        return safetensors.torch.load_file(str(Path(summary["run_dir"]) / "model" / "model.safetensors"))

    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), (
        "the resumed run did not continue the weights"
    )
    checkpoint = next((Path(whole["run_dir"]) / "checkpoints").glob("checkpoint-*"))
    model = AutoModelForImageClassification.from_pretrained(checkpoint)
    saved = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    assert set(saved) == set(model.state_dict())  # names the Trainer's reload finds
