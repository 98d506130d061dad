"""task: seq2seq on tiny in-process T5 and BART models: data checks, label masking, training, eval, predict, serving,
export and exact resume."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from pathlib import Path

import openai
import pytest
import torch
import uvicorn

from conftest import WORDS, write_jsonl
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.data.collate import IGNORE
from tunesmith.errors import TunesmithError
from tunesmith.run_folder import RunFolder
from tunesmith.tasks.seq2seq.data import Seq2SeqCollator, SourceEncoder, SourceTarget, tokenize_pairs
from tunesmith.tasks.seq2seq.metrics import target_loss
from tunesmith.tasks.seq2seq.run import load_run

PAD, EOS = 0, 1


def build_tokenizer():
    """T5-style: <pad> 0, </s> 1 appended to every text, whole words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["<pad>", "</s>", "<unk>", *dict.fromkeys(WORDS), *map(str, range(10))]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def t5_model(vocab: int):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=vocab,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=PAD,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    return T5ForConditionalGeneration(config)


def bart_model(vocab: int):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=vocab,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=2,
        decoder_start_token_id=EOS,
        forced_bos_token_id=None,
        forced_eos_token_id=EOS,
        tie_word_embeddings=False,  # tied, a random BART echoes its start token (EOS) and never writes a word
    )
    return BartForConditionalGeneration(config)


def pairs(count: int, seed: int = 0) -> list[dict]:
    """Target: the source's first three words (a task a tiny model learns in a few steps)."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        rows.append({"source": " ".join(words) + f" {index % 10}", "target": " ".join(words[:3])})
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run 10x faster on one thread than on two a busy 2-core host shares."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = build_tokenizer()
    t5_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def raw_config(folder: Path, model: Path, rows: int = 48, **sections) -> dict:
    raw = {
        "task": "seq2seq",
        "model": {"name": str(model)},
        "data": {
            "train_file": str(write_jsonl(folder / "pairs.jsonl", pairs(rows))),
            "validation_ratio": 0.2,
            "test_ratio": 0.1,
        },
        "method": {"name": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "train": {
            "batch_size": 8,
            "max_steps": 6,
            "learning_rate": 1e-2,
            "precision": "fp32",
            "logging_steps": 1,
            "eval_steps": 3,
            "warmup": 0,
        },
        "eval": {"samples": 2, "max_new_tokens": 6, "train_generations": 4, "generations": 6},
        "output": {"dir": str(folder / "runs"), "cache_dir": str(folder / "cache")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, t5_folder) -> dict:
    folder = tmp_path_factory.mktemp("s2s-run")
    return api.train(config_from_dict(raw_config(folder, t5_folder)))


# -- data ------------------------------------------------------------------------------------------------------


def test_bad_rows_are_named_with_file_line_field_and_fix(tmp_path, t5_folder):
    data = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"source": "the cat sat", "target": "the cat"},
            {"source": "dogs ran", "target": "  "},
            {"text": "birds sang", "target": "birds"},
            {"source": "rain", "target": None},
            {"source": 3, "target": "sun"},
        ],
    )
    raw = raw_config(tmp_path, t5_folder)
    raw["data"] |= {"train_file": str(data), "test_ratio": 0.0}
    with pytest.raises(TunesmithError) as caught:
        api.train(config_from_dict(raw))
    assert "4 bad row(s); nothing was trained" in str(caught.value)
    assert caught.value.details == [
        f"  {data}:2: field 'target' is empty; give it a text or remove the row",
        f"  {data}:3: missing field 'source' (fields present: target, text); rename the column or set "
        "seq2seq.source_field",
        f"  {data}:4: field 'target' is null; give it a text or remove the row",
        f"  {data}:5: field 'source' must be a string, got int",
    ]
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def test_field_names_are_configurable_and_duplicates_and_test_split_are_counted(tmp_path, t5_folder):
    rows = [{"article": r["source"], "headline": r["target"]} for r in pairs(30)]
    data = write_jsonl(tmp_path / "renamed.jsonl", rows + rows[:4])
    raw = raw_config(tmp_path, t5_folder)
    raw["data"] |= {"train_file": str(data)}
    raw["seq2seq"] = {"source_field": "article", "target_field": "headline"}
    checked = api.check_data(config_from_dict(raw))
    report = checked.report
    assert report["duplicates_removed"] == 4 and report["rows_read"] == 34
    assert report["test_examples"] == 3 and len(checked.test) == 3  # 0.1 of 30, held out before validation
    assert report["train_examples"] + report["validation_examples"] == 27
    assert {e.key for e in checked.test}.isdisjoint({e.key for e in checked.train + checked.validation})
    # `tunesmith data check` counts each source's tokens (SourceTarget.token_count) against data.max_length
    tokenizer = build_tokenizer()
    longest = max(len(tokenizer(e.source)["input_ids"]) for e in checked.train)
    lengths = report["lengths"]
    assert lengths["checked"] and lengths["train"]["examples"] == len(checked.train)
    assert lengths["train"]["longest"][0].endswith(f": {longest} tokens")


def test_over_long_sources_and_targets_are_counted_and_cut_keeping_eos(tmp_path, t5_folder):
    encoder = SourceEncoder(build_tokenizer())
    examples = [
        SourceTarget("f:1", "the cat sat on a mat", "the cat"),  # source 7 tokens with EOS
        SourceTarget("f:2", "dogs ran", "dogs ran to the park"),  # target 6 tokens with EOS
        SourceTarget("f:3", "rain", "sun"),
    ]
    raw = raw_config(tmp_path, t5_folder, data={"max_length": 8})
    data = config_from_dict(raw).data.model_copy(update={"max_length": 5})
    rows, kept, over = tokenize_pairs(examples, data, 4, encoder)
    assert data.on_overflow == "truncate"  # the seq2seq default, counted below
    assert (over["sources"]["count"], over["targets"]["count"]) == (1, 1)
    assert rows[0]["input_ids"] == encoder.encode_source("the cat sat on")[:4] + [EOS]
    assert len(rows[0]["input_ids"]) == 5 and rows[1]["labels"][-1] == EOS and len(rows[1]["labels"]) == 4
    dropped, kept, over = tokenize_pairs(
        examples, data.model_copy(update={"on_overflow": "drop"}), 4, encoder
    )
    assert [e.where for e in kept] == ["f:3"] and over["sources"]["count"] == 1


# -- labels, collation, loss --------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [t5_model, bart_model], ids=["t5", "bart"])
def test_target_padding_is_masked_and_the_loss_is_per_target_token(build):
    tokenizer = build_tokenizer()
    encoder = SourceEncoder(tokenizer)
    rows = [
        {"input_ids": encoder.encode_source("the cat sat on a mat"), "labels": encoder.encode_target("the")},
        {"input_ids": encoder.encode_source("dogs"), "labels": encoder.encode_target("dogs ran to the park")},
    ]
    batch = Seq2SeqCollator(PAD)(rows)
    assert batch["labels"].tolist()[0] == [
        tokenizer.convert_tokens_to_ids("the"),
        EOS,
        *[IGNORE] * 4,
    ]
    assert batch["labels"][1, -1] == EOS  # every target ends in EOS: the model learns to stop
    assert batch["attention_mask"].tolist()[1] == [1, 1, 0, 0, 0, 0, 0]
    assert batch["input_ids"][1, 2:].eq(PAD).all()
    model = build(len(tokenizer)).eval()
    # the model's decoder reads the target shifted right, with -100 read as padding
    decoder_inputs = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    assert decoder_inputs[0].tolist()[:2] == [model.config.decoder_start_token_id, batch["labels"][0, 0]]
    assert IGNORE not in decoder_inputs.tolist()[0]
    with torch.no_grad():
        logits = model(**batch).logits
    # summed over the 8 target tokens and divided by 8 (not a mean of per-row means)
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1)
    )
    assert target_loss(model, rows, PAD, batch_size=1)["loss"] == pytest.approx(per_token.item(), abs=1e-5)
    assert target_loss(model, rows, PAD)["tokens"] == 8


# -- a trained run -------------------------------------------------------------------------------------------


def test_training_records_loss_rouge_and_bleu(lora_run):
    run = RunFolder.open(lora_run["run_dir"])
    summary = run.read_summary()
    assert summary.status == "finished" and summary.global_step == 6 and summary.method == "lora"
    assert summary.validation_loss_after < summary.validation_loss_before
    evaluations = [m for m in run.read_metrics() if "eval_loss" in m]
    assert [m["step"] for m in evaluations] == [0, 3, 6]
    assert all({"eval_rouge1", "eval_rougeL", "eval_bleu"} <= set(m) for m in evaluations)
    assert summary.validation["loss"] == evaluations[-1]["eval_loss"]
    assert summary.test["loss"] < summary.test_before["loss"]
    report = json.loads(run.data_report.read_text())
    assert report["train_tokens"]["eos_in_labels"] == report["train_examples"]
    samples = run.read_jsonl(run.samples)
    assert len(samples) == 2 and all(s["base"] is not None and s["reference"] for s in samples)
    page = (run.path / "report.html").read_text()
    assert all(
        f"<td>{s['prompt']}</td><td>{s['reference']}</td>" in page for s in samples
    )  # source, reference


def test_validation_loss_is_the_target_loss_of_the_final_weights(lora_run):
    run = RunFolder.open(lora_run["run_dir"])
    tuned = load_run(run)
    checked = api.check_data(run.load_config())
    rows, _, _ = tokenize_pairs(
        checked.validation, tuned.cfg.data, tuned.cfg.section("seq2seq").max_target_length, tuned.renderer
    )
    assert target_loss(tuned.model, rows, PAD)["loss"] == pytest.approx(
        run.read_summary().validation_loss_after, abs=1e-5
    )


def test_eval_baseline_scores_match_sacrebleu_and_rouge_on_the_same_strings(lora_run):
    import sacrebleu
    from rouge_score import rouge_scorer

    result = api.evaluate(lora_run["run_dir"], baseline=True)
    assert result["split"] == "test" and result["tuned"]["generated_examples"] == result["examples"]
    generated = [json.loads(line) for line in (Path(result["folder"]) / "generations.jsonl").open()]
    for side, key in (("tuned", "output"), ("baseline", "base_output")):
        outputs = [g[key] for g in generated]
        references = [g["reference"] for g in generated]
        bleu = sacrebleu.corpus_bleu(outputs, [references]).score
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        rouge = sum(
            scorer.score(r, o)["rougeL"].fmeasure for r, o in zip(references, outputs, strict=True)
        ) / len(outputs)
        assert result[side]["bleu"] == pytest.approx(bleu, abs=0.01)
        assert result[side]["rougeL"] == pytest.approx(100 * rouge, abs=0.01)
    assert result["tuned"]["loss"] < result["baseline"]["loss"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_predict_writes_what_the_server_answers_on_v1_completions(lora_run, tmp_path):
    sources = [{"source": r["source"]} for r in pairs(4, seed=7)]
    table = write_jsonl(tmp_path / "new.jsonl", sources)
    result = api.predict(lora_run["run_dir"], table, tmp_path / "out.jsonl")
    predictions = [json.loads(line) for line in (tmp_path / "out.jsonl").open()]
    assert result["rows"] == 4 and [p["source"] for p in predictions] == [s["source"] for s in sources]
    assert predictions[0]["input"] == f"{table}:1"
    assert api.generate(lora_run["run_dir"], [sources[0]["source"]], max_new_tokens=6) == [
        predictions[0]["prediction"]
    ]

    app = api.serve_app([lora_run["run_dir"]])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        model_id = client.models.list().data[0].id
        for source, prediction in zip(sources, predictions, strict=True):
            served = client.completions.create(model=model_id, prompt=source["source"], max_tokens=6)
            assert served.choices[0].text == prediction["prediction"]
        streamed = client.completions.create(
            model=model_id, prompt=sources[1]["source"], max_tokens=6, stream=True
        )
        assert "".join(chunk.choices[0].text for chunk in streamed) == predictions[1]["prediction"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_export_safetensors_reloads_with_logit_parity(lora_run, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    record = api.export(lora_run["run_dir"], "safetensors", tmp_path / "export")
    assert record["parity"]["max_abs_logit_difference"] <= 1e-4
    assert "model.safetensors" in record["files"]
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "export")
    tuned = load_run(RunFolder.open(lora_run["run_dir"]))
    batch = Seq2SeqCollator(PAD)(
        [{"input_ids": tuned.renderer.encode_source("the cat sat"), "labels": [5, EOS]}]
    )
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, tuned.model(**batch).logits, atol=1e-4)


# -- resume ----------------------------------------------------------------------------------------------------


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path, t5_folder):
    from transformers import TrainerCallback

    class StopAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    raw = raw_config(
        tmp_path,
        t5_folder,
        rows=24,
        method={"name": "full"},
        train={"batch_size": 4, "max_steps": 4, "eval_steps": 2, "save_steps": 2, "learning_rate": 3e-3},
        eval={"train_generations": 0, "samples": 0, "before_training": False},
    )
    raw["data"] |= {"test_ratio": 0.0}
    whole = api.train(config_from_dict(raw, overrides=["output.name=whole"]))
    stopped = api.train(config_from_dict(raw, overrides=["output.name=split"]), callbacks=[StopAtStep()])
    assert stopped["status"] == "stopped" and stopped["global_step"] == 2
    resumed = api.train(config_from_dict(raw, overrides=["output.name=split"]), resume=True)
    assert resumed["global_step"] == 4

    def losses(result):
        return {
            m["step"]: m["loss"] for m in RunFolder(Path(result["run_dir"])).read_metrics() if "loss" in m
        }

    assert sorted(losses(resumed)) == list(range(1, 5))
    for step in range(1, 5):
        assert losses(resumed)[step] == pytest.approx(losses(whole)[step], abs=1e-5), step
    assert resumed["validation_loss_after"] == pytest.approx(whole["validation_loss_after"], abs=1e-5)


def test_config_refuses_settings_seq2seq_cannot_use(tmp_path, t5_folder):
    for section, values, message in (
        ("data", {"packing": True}, "data.packing is for causal-lm"),
        ("data", {"on_overflow": "windows"}, "seq2seq takes drop or truncate"),
        ("data", {"system_prompt": "be brief"}, "seq2seq takes seq2seq.source_prefix"),
        ("method", {"name": "features"}, "method.name: features needs labels"),
    ):
        with pytest.raises(TunesmithError, match=message):
            config_from_dict(raw_config(tmp_path, t5_folder, **{section: values}))


def greedy(model, source_ids: list[int], steps: int) -> list[int]:
    """Decoding written out: start token, then the argmax of each step, until EOS."""
    decoded = [model.config.decoder_start_token_id]
    with torch.no_grad():
        for _ in range(steps):
            logits = model(
                input_ids=torch.tensor([source_ids]), decoder_input_ids=torch.tensor([decoded])
            ).logits
            token = int(logits[0, -1].argmax())
            if token == EOS:
                break
            decoded.append(token)
    return decoded[1:]


def test_bart_run_answers_as_greedy_decoding_written_out(tmp_path):
    tokenizer = build_tokenizer()
    bart_model(len(tokenizer)).save_pretrained(tmp_path / "bart")
    tokenizer.save_pretrained(tmp_path / "bart")
    raw = raw_config(
        tmp_path,
        tmp_path / "bart",
        rows=32,
        method={"name": "full"},
        # barely moved from its random start, so that it writes words rather than EOS at once
        train={"max_steps": 2, "eval_steps": 2, "learning_rate": 1e-6},
        eval={"train_generations": 0, "samples": 0, "before_training": False},
    )
    raw["data"] |= {"test_ratio": 0.0}
    run_dir = api.train(config_from_dict(raw))["run_dir"]
    tuned = load_run(RunFolder.open(run_dir))
    sources = [p["source"] for p in pairs(3, seed=5)]
    # BART's generation config forces EOS as the last of max_new_tokens (forced_eos_token_id): 4 words of 5
    expected = [
        tokenizer.decode(
            greedy(tuned.model, tuned.renderer.encode_source(s), 4), skip_special_tokens=True
        ).strip()
        for s in sources
    ]
    assert api.generate(run_dir, sources, max_new_tokens=5) == expected
    assert all(expected)  # the decoder's start token is not taken for an answer, nor is EOS


def test_eval_on_a_file_scores_every_row_of_it(lora_run, tmp_path):
    table = write_jsonl(tmp_path / "other.jsonl", pairs(10, seed=3))
    result = api.evaluate(lora_run["run_dir"], data=table, generations=2)
    # the run's data.test_ratio (0.1) must not hold any of the file out: all 10 rows are scored
    assert (
        result["split"] == "data" and result["examples"] == 10 and result["tuned"]["generated_examples"] == 2
    )
