"""task: speech-recognition on a tiny in-process Whisper and espeak-ng clips: data checks, label masking, feature
padding, WER/CER, exact resume, predict, eval --baseline, export, and OpenAI's /v1/audio/transcriptions."""

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from conftest import write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.run_folder import RunFolder

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPECIAL = [
    "<|startoftranscript|>",
    "<|en|>",
    "<|fr|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
]
SECONDS = 2  # the tiny model's window: its feature extractor pads or cuts every clip to this


def build_whisper_folder(path: Path) -> Path:
    """A tiny multilingual-style Whisper (d_model 32, 2+2 layers, 16 mel bins, a 2 s window) with a byte-level BPE
    tokenizer over the digit words plus Whisper's special tokens, and a generation config that maps them."""
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
    backend.train_from_iterator([" ".join(WORDS), *[f" {w}" for w in WORDS]] * 3, trainer)
    path.mkdir(parents=True)
    backend.model.save(str(path))
    tokenizer = WhisperTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ["<|endoftext|>", *SPECIAL]}
    extractor = WhisperFeatureExtractor(feature_size=16, chunk_length=SECONDS)
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=extractor.nb_max_frames // 2,
        max_target_positions=32,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=[],
        begin_suppress_tokens=[],
        apply_spec_augment=True,
        mask_time_prob=0.1,
        mask_time_length=4,
        mask_feature_prob=0.1,
        mask_feature_length=2,
    )
    model = WhisperForConditionalGeneration(config)
    generation = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|fr|>": ids["<|fr|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=True,
    )
    model.generation_config = generation
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    extractor.save_pretrained(path)
    return path


def say(text: str, target: Path, voice: str = "en-us", speed: int = 170) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(target), text], check=True)
    return target


def spoken_table(folder: Path, count: int) -> Path:
    """`count` clips of two digit words each, in a JSONL table of audio path + transcript."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        text = f"{WORDS[i % 10]} {WORDS[(3 * i + 1) % 10]}"
        say(text, folder / f"{i}.wav", speed=150 + 10 * (i % 4))
        rows.append({"audio": f"{i}.wav", "text": text})
    return write_jsonl(folder / "clips.jsonl", rows)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory) -> Path:
    return build_whisper_folder(tmp_path_factory.mktemp("whisper") / "model")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return spoken_table(tmp_path_factory.mktemp("clips"), 16)


def speech_config(folder: Path, model: Path, table: Path, **sections) -> dict:
    raw = {
        "task": "speech-recognition",
        "model": {"name": str(model)},
        "data": {"train_file": str(table), "validation_ratio": 0.25},
        "method": {"name": "full"},
        "speech": {"language": "en", "max_new_tokens": 4},
        "train": {
            "batch_size": 4,
            "max_steps": 6,
            "learning_rate": 3e-3,
            "precision": "fp32",
            "logging_steps": 1,
            "warmup": 0,
            "eval_steps": 3,
            "save_steps": 3,
            "scheduler": "constant",
        },
        "eval": {"batch_size": 8, "train_generations": 2, "generations": 2, "before_training": False},
        "output": {"dir": str(folder / "runs"), "cache_dir": str(folder / "cache")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def prepared(whisper: Path, table: Path):
    from tunesmith.tasks.speech_recognition.data import (
        SpeechCollator,
        SpeechFeatures,
        load_processor,
        read_transcribed,
    )

    cfg = config_from_dict(speech_config(table.parent, whisper, table))
    extractor, tokenizer = load_processor(str(whisper), cfg)
    speech = SpeechFeatures(extractor, tokenizer, 32, "drop")
    examples, problems = read_transcribed(str(table), cfg.data, cfg.section("speech"))
    assert problems == []
    rows, report = speech.prepare(examples)
    return (
        speech,
        tokenizer,
        SpeechCollator(speech, tokenizer.convert_tokens_to_ids("<|startoftranscript|>")),
        rows,
    )


def test_labels_are_padded_with_minus_100_and_lose_the_decoder_start_token(whisper, clips):
    from transformers import WhisperForConditionalGeneration

    from tunesmith.tasks.speech_recognition.data import pad_labels

    assert pad_labels([[7, 1, 2, 3], [7, 4]], 7).tolist() == [[1, 2, 3], [4, -100, -100]]
    assert pad_labels([[1, 2], [7]], 7).tolist() == [
        [1, 2],
        [7, -100],
    ]  # kept unless every row starts with it
    speech, tokenizer, collator, rows = prepared(whisper, clips)
    batch = collator([rows[0], rows[1], {**rows[2], "labels": rows[2]["labels"][:5]}])
    labels = batch["labels"]
    prefix = tokenizer.convert_tokens_to_ids(["<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    assert labels[:, :3].tolist() == [prefix] * 3  # the language/task tokens from speech.language
    assert labels[2, 4:].eq(-100).all() and labels[2, :4].ne(-100).all()
    assert labels[0, len(rows[0]["labels"]) - 1 :].eq(-100).all()
    # The loss ignores the padding: the same clip scores the same alone and padded in a batch.
    model = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    alone = collator([rows[2]])
    with torch.no_grad():
        padded_loss = model(input_features=batch["input_features"][2:], labels=labels[2:]).loss
        widened = torch.cat([alone["labels"], torch.full((1, 5), -100)], dim=1)
        assert model(input_features=alone["input_features"], labels=widened).loss == pytest.approx(
            model(**alone).loss.item(), abs=1e-6
        )
    assert padded_loss.item() > 0


def test_features_are_padded_to_the_window_whatever_the_batch(whisper, clips):
    speech, _, collator, rows = prepared(whisper, clips)
    batch = collator(rows[:3])
    assert tuple(batch["input_features"].shape) == (3, 16, SECONDS * 100)
    for i in range(3):
        alone = collator([rows[i]])["input_features"][0]
        assert torch.allclose(batch["input_features"][i], alone)
    clip = speech.load(rows[0]["path"])
    frames = len(clip) // 160
    features = batch["input_features"][0]
    assert frames < SECONDS * 100 - 10  # the clip is shorter than the window: the rest is padding
    assert torch.all(
        features[:, frames + 2 :] == features[0, -1]
    )  # silence after the clip: one constant value


def test_wer_and_cer_equal_jiwer_on_the_same_strings():
    import jiwer

    from tunesmith.tasks.speech_recognition.metrics import error_rates, example_wer

    references = ["the cat sat on the mat", "one two three", "hello world"]
    hypotheses = ["the cat sit on mat", "one two three", "hello there world"]
    scores = error_rates(references, hypotheses, "none")
    assert scores["wer"] == pytest.approx(jiwer.wer(references, hypotheses), abs=1e-6)
    assert scores["cer"] == pytest.approx(jiwer.cer(references, hypotheses), abs=1e-6)
    assert scores["wer"] == pytest.approx(3 / 11)  # sit for sat, mat's the deleted, there inserted
    assert example_wer("one two three", "one too three", "none") == pytest.approx(1 / 3)
    # Whisper's English normalizer: case, punctuation and numbers written as digits no longer count as errors.
    assert error_rates(["Twenty-one cats!"], ["twenty one cats"], "english")["wer"] == 0.0
    assert error_rates(["Hello, World."], ["hello world"], "basic")["wer"] == 0.0
    assert error_rates(["Hello, World."], ["hello world"], "none")["wer"] == 1.0


def test_bad_audio_rows_are_named_with_file_and_line(tmp_path, whisper):
    from tunesmith.tasks.speech_recognition.data import check_speech

    good = say("one two", tmp_path / "good.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "noise.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    soundfile.write(tmp_path / "silent.wav", np.zeros((0,), dtype=np.float32), 16000)
    rows = [
        {"audio": "good.wav", "text": "one two"},
        {"audio": "empty.wav", "text": "three"},
        {"audio": "noise.wav", "text": "four"},
        {"audio": "missing.wav", "text": "five"},
        {"audio": "good.wav", "text": "  "},
        {"path": "good.wav", "text": "six"},
        {"audio": "silent.wav", "text": "seven"},
    ]
    table = write_jsonl(tmp_path / "clips.jsonl", rows)
    cfg = config_from_dict(speech_config(tmp_path, whisper, table))
    problems = check_speech(cfg.data.model_copy(update={"on_error": "skip"}), cfg.section("speech")).problems
    assert [p.split(": ")[0] for p in problems] == [f"{table}:{n}" for n in (2, 3, 4, 5, 6, 7)]
    assert "unreadable audio" in problems[0] and "unreadable audio" in problems[1]
    assert f"audio file not found: {tmp_path}/missing.wav" in problems[2]
    assert "empty transcript in field 'text'" in problems[3]
    assert "missing audio field 'audio' (fields present: path, text); set speech.audio_field" in problems[4]
    assert "empty audio" in problems[5]
    renamed = config_from_dict(speech_config(tmp_path, whisper, table, speech={"audio_field": "path"}))
    checked = check_speech(renamed.data.model_copy(update={"on_error": "skip"}), renamed.section("speech"))
    assert [e.text for e in checked.train + checked.validation + checked.test] == ["six"]
    with pytest.raises(TunesmithError, match="6 bad row"):
        api.train(cfg)
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(good, folder / "a.wav")
    (folder / "a.txt").write_text("one two")
    shutil.copy(good, folder / "b.wav")
    (folder / "c.wav").write_bytes(b"")
    (folder / "c.txt").write_text("three")
    folder_cfg = config_from_dict(speech_config(tmp_path, whisper, folder))
    checked = check_speech(
        folder_cfg.data.model_copy(update={"on_error": "skip", "validation_ratio": 0.0}),
        folder_cfg.section("speech"),
    )
    assert checked.problems[0] == f"{folder}/b.wav: no transcript; put it in b.txt beside the audio file"
    assert checked.problems[1].startswith(f"{folder}/c.wav: unreadable audio")
    assert len(checked.problems) == 2
    assert [e.text for e in checked.train] == ["one two"]


def test_long_clips_and_resampled_clips_are_counted(tmp_path, whisper):
    from tunesmith.tasks.speech_recognition.data import SpeechFeatures, load_processor, read_transcribed

    tone = np.sin(np.linspace(0, 2 * np.pi * 300, 22050 * 3)).astype(np.float32)  # 3 s at 22.05 kHz
    soundfile.write(tmp_path / "long.wav", tone, 22050)
    say("one", tmp_path / "short.wav")  # espeak-ng writes 22.05 kHz too
    table = write_jsonl(
        tmp_path / "t.jsonl", [{"audio": "long.wav", "text": "one"}, {"audio": "short.wav", "text": "one"}]
    )
    cfg = config_from_dict(speech_config(tmp_path, whisper, table))
    extractor, tokenizer = load_processor(str(whisper), cfg)
    examples, _ = read_transcribed(str(table), cfg.data, cfg.section("speech"))
    dropped, report = SpeechFeatures(extractor, tokenizer, 32, "drop").prepare(examples)
    assert report["resampled"] == 2 and report["over_window"] == 1 and report["action"] == "dropped"
    assert [r["path"] for r in dropped] == [str(tmp_path / "short.wav")]
    cut, report = SpeechFeatures(extractor, tokenizer, 32, "truncate").prepare(examples)
    speech = SpeechFeatures(extractor, tokenizer, 32, "truncate")
    assert len(cut) == 2 and report["action"] == "cut" and len(speech.load(cut[0]["path"])) == SECONDS * 16000
    _, report = SpeechFeatures(extractor, tokenizer, 6, "drop").prepare(examples)
    assert report["over_max_label_tokens"] == 0  # start, language, task, no-timestamps, 'one', end of text
    kept, report = SpeechFeatures(extractor, tokenizer, 5, "truncate").prepare(examples)
    assert report["over_max_label_tokens"] == 2
    assert tokenizer.decode(kept[0]["labels"][-1]) == "<|endoftext|>"  # cut, but it still ends


@pytest.fixture(scope="module")
def finished(tmp_path_factory, whisper, clips):
    """One uninterrupted run and the same run stopped at step 3 and resumed."""
    from test_train import StopAt

    folder = tmp_path_factory.mktemp("speech-runs")
    raw = speech_config(folder, whisper, clips)
    whole = api.train(config_from_dict(raw, overrides=["output.name=whole"]))
    stopped = api.train(config_from_dict(raw, overrides=["output.name=split"]), callbacks=[StopAt(3)])
    resumed = api.train(config_from_dict(raw, overrides=["output.name=split"]), resume=True)
    return whole, stopped, resumed


def test_a_stopped_run_resumes_exactly_where_it_stopped(finished):
    whole, stopped, resumed = finished
    assert stopped["status"] == "stopped" and stopped["global_step"] == 3
    assert resumed["status"] == "finished" and resumed["global_step"] == 6

    def losses(summary):
        metrics = (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, metrics) if "loss" in r}

    assert len(losses(whole)) == 6
    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-5)
    assert resumed["validation"]["loss"] == pytest.approx(whole["validation"]["loss"], abs=1e-5)
    assert whole["speech"]["spec_augment"]["enabled"] is True
    assert whole["speech"]["generate"] == {"language": "en", "task": "transcribe"}
    assert whole["speech"]["normalizer"] == "english"
    metrics = [
        json.loads(line) for line in (Path(whole["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(
        "eval_wer" in m and "eval_cer" in m for m in metrics
    )  # generation-based evaluation in training


def test_eval_baseline_scores_base_and_tuned_and_the_report_shows_the_worst_clips(finished):
    import jiwer

    from tunesmith.tasks.speech_recognition.metrics import text_normalizer

    whole = finished[0]
    result = api.evaluate(whole["run_dir"], baseline=True)
    assert result["split"] == "validation" and result["examples"] == 4
    rows = [
        json.loads(line) for line in (Path(result["folder"]) / "generations.jsonl").read_text().splitlines()
    ]
    normalize = text_normalizer("english")
    for side in ("tuned", "base"):
        references = [normalize(r["reference"]) for r in rows]
        expected = jiwer.wer(references, [normalize(r[side]) for r in rows])
        assert result["tuned" if side == "tuned" else "baseline"]["wer"] == pytest.approx(expected, abs=1e-6)
    assert [r["wer_tuned"] for r in rows] == sorted((r["wer_tuned"] for r in rows), reverse=True)
    page = (Path(whole["run_dir"]) / "report.html").read_text()
    samples = [
        json.loads(line) for line in (Path(whole["run_dir"]) / "samples.jsonl").read_text().splitlines()
    ]
    assert len(samples) == 2 and all(s["base"] is not None for s in samples)
    assert "Worst-transcribed clips" in page and samples[0]["reference"] in page
    assert "normalized by <code>speech.normalizer</code> (english)" in page  # from run.json, as trained


def test_predict_and_the_openai_client_give_the_same_transcripts(tmp_path, finished, clips):
    import openai
    import uvicorn

    run_dir = finished[0]["run_dir"]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("0.wav", "5.wav", "9.wav"):
        shutil.copy(clips.parent / name, inputs / name)
    result = api.predict(run_dir, inputs, tmp_path / "out.jsonl")
    predicted = {
        Path(r["input"]).name: r["text"]
        for r in map(json.loads, Path(result["output"]).read_text().splitlines())
    }
    assert result["rows"] == 3 and set(predicted) == {"0.wav", "5.wav", "9.wav"}

    app = api.serve_app([run_dir], api_key="k")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        for name, text in predicted.items():
            with open(inputs / name, "rb") as handle:
                answer = client.audio.transcriptions.create(model="whole", file=handle)
            assert answer.text == text
        with open(inputs / "5.wav", "rb") as handle:
            plain = client.audio.transcriptions.create(model="whole", file=handle, response_format="text")
        assert plain.strip() == predicted["5.wav"]
        with open(inputs / "9.wav", "rb") as handle:
            verbose = client.audio.transcriptions.create(
                model="whole", file=handle, response_format="verbose_json"
            )
        assert verbose.text == predicted["9.wav"] and verbose.duration == pytest.approx(
            soundfile.info(str(inputs / "9.wav")).duration, abs=1e-3
        )
        with pytest.raises(openai.BadRequestError, match="not readable audio"):
            client.audio.transcriptions.create(model="whole", file=("x.wav", b"not audio at all"))
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_export_to_safetensors_reloads_with_the_same_logits(finished, tmp_path):
    record = api.export(finished[0]["run_dir"], "safetensors", tmp_path / "export")
    assert record["parity"]["max_abs_logit_difference"] <= 1e-4
    assert (tmp_path / "export" / "model.safetensors").exists()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(
        tmp_path / "export"
    )  # feature extractor and tokenizer beside it
    assert processor.feature_extractor.n_samples == SECONDS * 16000
    assert (
        processor.tokenizer.get_vocab()
        == AutoProcessor.from_pretrained(finished[0]["run_dir"] + "/model").tokenizer.get_vocab()
    )


def test_lora_adapts_encoder_and_decoder_and_the_test_split_is_scored_before_and_after(
    tmp_path, whisper, clips
):
    from tunesmith.tasks.speech_recognition.run import Transcriber

    raw = speech_config(
        tmp_path,
        whisper,
        clips,
        method={"name": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        data={"validation_ratio": 0.0, "test_ratio": 0.2},
        eval={"before_training": True, "train_generations": 0, "generations": 0},
        train={"max_steps": 2, "eval_steps": 2, "save_steps": 2},
    )
    summary = api.train(config_from_dict(raw))
    assert (
        summary["is_adapter"] and 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"] / 3
    )
    adapter = json.loads((Path(summary["run_dir"]) / "model" / "adapter_config.json").read_text())
    targets = set(adapter["target_modules"])
    assert {"q_proj", "v_proj", "fc1"} <= targets and "proj_out" not in targets
    assert not adapter.get("modules_to_save")  # no trainable copy of the tied vocabulary projection
    assert summary["test"]["examples"] == summary["test_before"]["examples"] == 3
    # two number words a clip, written as one number by the English normalizer ("one four" -> "14")
    assert summary["test"]["words"] == summary["test_before"]["words"] == 3
    assert {"wer", "cer"} <= set(summary["test"]) and {"wer", "cer"} <= set(summary["test_before"])
    run = RunFolder(Path(summary["run_dir"]))
    from transformers import WhisperForConditionalGeneration

    tuned, base = Transcriber(run), WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    features = torch.randn(1, 16, SECONDS * 100)
    decoder = torch.tensor([[tuned.model.config.decoder_start_token_id]])
    with torch.no_grad():
        tuned_logits = tuned.model(input_features=features, decoder_input_ids=decoder).logits
        base_logits = base(input_features=features, decoder_input_ids=decoder).logits
    assert not torch.allclose(tuned_logits, base_logits)  # the saved adapter is loaded over the base
    result = api.evaluate(summary["run_dir"])
    assert result["split"] == "test" and result["examples"] == 3


def test_a_run_learns_to_hear_two_words_lowering_validation_loss_and_wer(tmp_path, whisper):
    # Learnable: each clip says "zero" or "seven", at one of five speeds. A decoder that ignores the audio can do no
    # better than always writing the commoner word, so a WER under that shows the encoder learned to listen
    # (measured: WER 3.0 -> 0.33 at step 75 -> 0.0 at step 150; loss 5.69 -> 0.005; 0.67 at 150 steps of 3e-3).
    folder = tmp_path / "clips"
    folder.mkdir()
    rows = []
    for i in range(24):
        text = ("zero", "seven")[i % 2]
        say(text, folder / f"{i}.wav", speed=140 + 15 * (i // 2 % 5))
        rows.append({"audio": f"{i}.wav", "text": text})
    raw = speech_config(
        tmp_path,
        whisper,
        write_jsonl(folder / "clips.jsonl", rows),
        train={"max_steps": 150, "learning_rate": 1e-2, "eval_steps": 75, "save_steps": 75},
        eval={"before_training": True, "train_generations": 8, "generations": 0},
    )
    summary = api.train(config_from_dict(raw))
    metrics = (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    evaluations = [m for m in map(json.loads, metrics) if "eval_wer" in m]
    first, last = evaluations[0], evaluations[-1]
    assert (first["step"], last["step"]) == (0, 150)
    assert last["eval_loss"] < first["eval_loss"] and last["eval_wer"] < first["eval_wer"]
    result = api.evaluate(summary["run_dir"], generations=8)
    generated = Path(result["folder"], "generations.jsonl").read_text().splitlines()
    references = [json.loads(line)["reference"] for line in generated]
    assert len(references) == result["examples"] == 6  # the whole validation split was transcribed
    deaf = 1 - max(references.count(word) for word in ("zero", "seven")) / len(references)
    assert result["tuned"]["wer"] == pytest.approx(last["eval_wer"])
    assert last["eval_wer"] < deaf


def test_the_config_refuses_what_speech_recognition_cannot_do(tmp_path, whisper, clips):
    with pytest.raises(
        TunesmithError, match="train.metric: wer is better when lower; set train.greater_is_better"
    ):
        config_from_dict(speech_config(tmp_path, whisper, clips, train={"metric": "eval_wer"}))
    sweep = {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}, "metric": "eval_wer"}
    with pytest.raises(
        TunesmithError, match="sweep.direction: wer is better when lower; set sweep.direction: minimize"
    ):
        config_from_dict(speech_config(tmp_path, whisper, clips, sweep=sweep))
    with pytest.raises(TunesmithError, match="data.on_overflow: windows is not for speech"):
        config_from_dict(speech_config(tmp_path, whisper, clips, data={"on_overflow": "windows"}))
    cfg = config_from_dict(
        speech_config(tmp_path, whisper, clips, train={"metric": "eval_wer", "greater_is_better": False})
    )
    assert cfg.data.on_overflow == "drop"  # auto: over-window clips are dropped (and counted)


def test_freeze_encoder_leaves_only_the_decoder_trainable(whisper):
    from transformers import WhisperForConditionalGeneration

    from tunesmith.tasks.speech_recognition import freeze_encoder, set_spec_augment

    model = WhisperForConditionalGeneration.from_pretrained(whisper)
    encoder = sum(p.numel() for p in model.model.encoder.parameters())
    assert freeze_encoder(model) == encoder
    assert not any(p.requires_grad for p in model.model.encoder.parameters())
    assert all(p.requires_grad for p in model.model.decoder.parameters())
    assert set_spec_augment(model, False)["enabled"] is False and model.config.apply_spec_augment is False
    assert set_spec_augment(model, "auto")["enabled"] is False  # auto keeps what the config says


def test_forgetting_drift_of_a_word_error_rate_is_in_points_even_from_zero():
    from tunesmith.evaluation.forgetting import describe, drift

    result = drift({"wer": 0.0}, {"wer": 0.05}, 1.0, "wer")  # relative to 0 it would divide by zero
    assert result["drift_percent"] == pytest.approx(5.0) and result["unit"] == "points" and result["warning"]
    assert "(+5.00 points)" in describe(result, "ref.jsonl")
    assert not drift({"wer": 0.10}, {"wer": 0.105}, 1.0, "wer")["warning"]  # +0.5 points: under the threshold
    assert drift({"perplexity": 10.0}, {"perplexity": 12.0}, 10.0)["drift_percent"] == pytest.approx(20.0)
