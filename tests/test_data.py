import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import prompt_response_rows, write_jsonl
from tunesmith import api
from tunesmith.cli import main
from tunesmith.config import DataConfig, config_from_dict
from tunesmith.data.collate import IGNORE, PadCollator
from tunesmith.data.prepare import check_data, encode, tokenize_data
from tunesmith.data.readers import read_rows
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.errors import TunesmithError


def hundred_rows_with_three_broken(path):
    rows = [json.dumps(r) for r in prompt_response_rows(100)]
    rows[9] = '{"prompt": "unterminated'  # line 10: bad JSON
    rows[41] = json.dumps({"prompt": "no answer here"})  # line 42: missing field
    rows[76] = json.dumps({"prompt": "numbers", "response": 7})  # line 77: wrong type
    return write_jsonl(path, rows)


def test_broken_rows_stop_the_run_and_are_all_listed(tmp_path, make_config):
    raw = make_config()
    hundred_rows_with_three_broken(tmp_path / "train.jsonl")
    with pytest.raises(TunesmithError) as caught:
        api.train(config_from_dict(raw))
    text = str(caught.value)
    assert "3 bad row(s); nothing was trained" in text
    assert f"{tmp_path / 'train.jsonl'}:10: invalid JSON" in text
    assert f"{tmp_path / 'train.jsonl'}:42: missing field 'response'" in text
    assert f"{tmp_path / 'train.jsonl'}:77: field 'response' must be a string, got int" in text
    assert not (tmp_path / "runs").exists()  # nothing was trained, no run folder


def test_skip_drops_broken_rows_and_reports_them(tmp_path):
    path = hundred_rows_with_three_broken(tmp_path / "train.jsonl")
    checked = check_data(DataConfig(train_file=str(path), on_error="skip", validation_ratio=0.0))
    assert len(checked.train) == 97
    assert checked.report["bad_rows"] == 3
    assert [p.split(":")[1] for p in checked.report["bad_row_list"]] == ["10", "42", "77"]


def test_data_check_cli_exit_codes(tmp_path, capsys):
    bad = hundred_rows_with_three_broken(tmp_path / "bad.jsonl")
    good = write_jsonl(tmp_path / "good.jsonl", prompt_response_rows(10))
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert ":77: field 'response'" in out and "3 bad row(s)" in out
    assert main(["data", "check", str(good)]) == 0


def test_readers_report_file_positions(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('prompt,response\nhello,world\n"multi\nline",answer\nonly,too,many\n')
    rows = read_rows(csv_file)
    assert [(r.line, r.error is None) for r in rows] == [(2, True), (3, True), (5, False)]
    json_file = tmp_path / "d.json"
    json_file.write_text('[\n  {"prompt": "a", "response": "b"},\n\n  {"prompt": "c", "response": "d"}\n]\n')
    assert [r.line for r in read_rows(json_file)] == [2, 4]
    parquet_file = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["c", ""]}), parquet_file)
    checked = check_data(DataConfig(train_file=str(parquet_file), on_error="skip", validation_ratio=0))
    assert checked.report["bad_row_list"] == [f"{parquet_file}:2: field 'response' is empty"]


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"instruction": "do", "input": "this", "output": "done"}, "alpaca"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "chat"),
        ({"text": "plain words"}, "text"),
        ({"prompt": "p", "response": "r"}, "prompt_response"),
    ],
)
def test_format_is_detected(tmp_path, row, fmt):
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    assert check_data(DataConfig(train_file=str(path), validation_ratio=0)).report["format"] == fmt


def test_unknown_shape_names_fields_and_fix(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        TunesmithError,
        match=r"d\.jsonl:1: cannot tell the data format from the fields \['answer', 'question'\]; set data.format",
    ):
        check_data(DataConfig(train_file=str(path)))


def test_duplicates_removed_and_counted(tmp_path):
    rows = prompt_response_rows(5) + prompt_response_rows(2)
    checked = check_data(
        DataConfig(train_file=str(write_jsonl(tmp_path / "d.jsonl", rows)), validation_ratio=0)
    )
    assert len(checked.train) == 5
    assert checked.report["duplicates_removed"] == 2


def test_prompt_tokens_and_padding_are_masked_and_eos_is_kept(tokenizer):
    renderer = Renderer(tokenizer, "chat")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap: pad == eos
    conversations = [
        (("user", "the cat sat"), ("assistant", "on a mat")),
        (("user", "dogs ran to the park and birds sang"), ("assistant", "rain")),
    ]
    from tunesmith.data.validate import Example

    encoded = [encode(Example("x", c), renderer, LossMask()) for c in conversations]
    batch = PadCollator(tokenizer.pad_token_id)(encoded)
    for row, conversation in enumerate(conversations):
        prompt_length = len(renderer.encode_prompt(conversation[:-1]))
        length = len(encoded[row]["input_ids"])
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        assert (labels[:prompt_length] == IGNORE).all()
        assert torch.equal(labels[prompt_length:length], ids[prompt_length:length])
        assert (labels[length:] == IGNORE).all()
        assert (batch["attention_mask"][row, :length] == 1).all() and (
            batch["attention_mask"][row, length:] == 0
        ).all()
        assert tokenizer.eos_token_id in labels[prompt_length:length].tolist()
        # Training sees exactly the tokens that generation will be given as a prompt.
        assert ids[:prompt_length].tolist() == renderer.encode_prompt(conversation[:-1])


def test_classic_template_appends_eos_to_answer(tokenizer):
    renderer = Renderer(tokenizer, "classic")
    text = renderer.render((("user", "cat"), ("assistant", "mat")), add_generation_prompt=False)
    assert text == "### Instruction:\ncat\n\n### Response:\nmat<|im_end|>"
    ids, trained = renderer.encode_conversation((("user", "cat"), ("assistant", "mat")))
    assert ids[-1] == tokenizer.eos_token_id and trained[-1]


def test_whole_sequence_loss_option(tokenizer):
    from tunesmith.data.validate import Example

    item = encode(
        Example("x", (("user", "cat"), ("assistant", "mat"))), Renderer(tokenizer, "chat"), LossMask("all")
    )
    assert item["labels"] == item["input_ids"]


def test_overflow_is_counted_dropped_or_truncated(tmp_path, tokenizer):
    long_row = {"prompt": "the cat sat " * 40, "response": "mat"}
    path = write_jsonl(tmp_path / "d.jsonl", [*prompt_response_rows(5), long_row])
    renderer = Renderer(tokenizer, "chat")
    for action, kept in (("drop", 5), ("truncate", 5)):
        cfg = DataConfig(train_file=str(path), validation_ratio=0, max_length=40, on_overflow=action)
        out = tokenize_data(check_data(cfg), cfg, renderer, None)
        over = out["report"]["over_max_length"]["train"]
        assert over["count"] == 1 and over["list"][0].startswith(f"{path}:6:")
        # Truncating the long example cuts off its whole answer: it is dropped and counted, not trained on silently.
        assert len(out["train"]) == kept
        assert all(len(item["input_ids"]) <= 40 for item in out["train"])
    assert out["report"]["over_max_length"]["train"]["dropped_with_no_answer_left"] == 1


def test_tokenization_cache_is_keyed_by_tokenizer(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", prompt_response_rows(6))
    cfg = DataConfig(train_file=str(path), validation_ratio=0)
    checked = check_data(cfg)
    first = tokenize_data(checked, cfg, Renderer(tokenizer, "chat"), tmp_path)
    second = tokenize_data(checked, cfg, Renderer(tokenizer, "chat"), tmp_path)
    assert not first["report"]["cache"]["hit"] and second["report"]["cache"]["hit"]
    assert second["train"] == first["train"]
    other = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|> ")
    third = tokenize_data(checked, cfg, Renderer(other, "chat"), tmp_path)
    assert not third["report"]["cache"]["hit"]
    assert third["train"] != first["train"]


def test_one_process_tokenizes_while_the_others_wait_for_its_cache(tmp_path, tokenizer):
    """Workers of a run share the cache folder: the lock makes one of them tokenize and the rest read it."""
    import fcntl
    import threading

    path = write_jsonl(tmp_path / "d.jsonl", prompt_response_rows(6))
    cfg = DataConfig(train_file=str(path), validation_ratio=0)
    checked = check_data(cfg)
    first = tokenize_data(checked, cfg, Renderer(tokenizer, "chat"), tmp_path)
    cached = tmp_path / "tokenized" / f"{first['report']['cache']['key']}.npz"
    cached.unlink()  # as if no one had tokenized yet; another worker holds the lock while it tokenizes
    results = []
    with open(cached.with_suffix(".lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(
            target=lambda: results.append(tokenize_data(checked, cfg, Renderer(tokenizer, "chat"), tmp_path))
        )
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not results  # it waits for the lock instead of tokenizing too
        holder = tmp_path / "holder"  # the lock holder tokenizes, then its cache lands in the shared folder
        second = tokenize_data(checked, cfg, Renderer(tokenizer, "chat"), holder)
        (holder / "tokenized" / cached.name).replace(cached)
    waiting.join(timeout=30)
    assert results[0]["report"]["cache"]["hit"]  # the waiting worker read the holder's cache
    assert results[0]["train"] == second["train"] == first["train"]


# -- encodings and empty values ------------------------------------------------------------------


def test_invalid_utf8_row_is_reported_with_its_line_never_replaced(tmp_path):
    lines = [json.dumps(row).encode() for row in prompt_response_rows(4)]
    lines[2] = b'{"prompt": "caf\xe9 au lait", "response": "latin-1 slipped in"}'  # line 3: not UTF-8
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    checked = check_data(DataConfig(train_file=str(path), on_error="skip", validation_ratio=0))
    assert checked.report["bad_row_list"] == [
        f"{path}:3: invalid UTF-8 (byte 0xe9 at column 16); re-save the file as UTF-8"
    ]
    assert checked.report["rows_read"] == 4 and len(checked.train) == 3
    assert not any("\ufffd" in turn for example in checked.train for _, turn in example.messages)
    stopped = check_data(DataConfig(train_file=str(path), validation_ratio=0))
    assert stopped.problems == checked.problems and stopped.train == []


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_byte_order_mark_is_read(tmp_path, suffix):
    rows = prompt_response_rows(3)
    if suffix == ".jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    elif suffix == ".json":
        text = json.dumps(rows, indent=1)
    else:
        text = "prompt,response\r\n" + "".join(f"{r['prompt']},{r['response']}\r\n" for r in rows)
    path = tmp_path / f"d{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Excel and Notepad on Windows write UTF-8
    checked = check_data(DataConfig(train_file=str(path), validation_ratio=0))
    assert checked.problems == []
    assert [e.messages[0][1] for e in checked.train] == [r["prompt"] for r in rows]


def test_invalid_utf8_in_csv_and_json_names_the_row(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_bytes(b"prompt,response\nhello,world\nna\xefve,answer\n")
    checked = check_data(DataConfig(train_file=str(csv_file), on_error="skip", validation_ratio=0))
    assert checked.problems == [
        f"{csv_file}:3: invalid UTF-8 (byte 0xef at column 3); re-save the file as UTF-8"
    ]
    json_file = tmp_path / "d.json"
    json_file.write_bytes(b'[\n {"prompt": "a", "response": "b"},\n {"prompt": "\xff", "response": "d"}\n]\n')
    checked = check_data(DataConfig(train_file=str(json_file), on_error="skip", validation_ratio=0))
    assert [p.split(": ", 1)[0] for p in checked.problems] == [f"{json_file}:3"]
    assert len(checked.train) == 1


def test_null_and_empty_fields_are_named_as_such(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": None, "response": "r"},
            {"prompt": "p"},
            {"prompt": "p", "response": "  "},
            {"prompt": "p", "response": "r"},
        ],
    )
    checked = check_data(DataConfig(train_file=str(path), on_error="skip", validation_ratio=0))
    assert checked.problems == [
        f"{path}:1: field 'prompt' is null; give it a value or remove the row",
        f"{path}:2: missing field 'response' (fields present: prompt)",
        f"{path}:3: field 'response' is empty",
    ]
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("prompt,response\nhello,\nhello,world\n")
    checked = check_data(DataConfig(train_file=str(csv_file), on_error="skip", validation_ratio=0))
    assert checked.problems == [f"{csv_file}:2: field 'response' is empty"]


def test_empty_and_null_labels_are_named_as_such(tmp_path):
    from tunesmith.data.labelled import LabelSettings, read_labelled

    cfg = DataConfig(train_file="unused", validation_ratio=0)
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("text,label\nteam won,sport\nshares rose,\n,business\n")
    _, problems = read_labelled(str(csv_file), cfg, LabelSettings(), "text")
    assert problems == [
        f"{csv_file}:3: label field 'label' is empty; give the row its label or remove it",
        f"{csv_file}:4: empty text in field 'text'; fill it or remove the row",
    ]
    jsonl = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": None}, {"text": None, "label": "x"}])
    _, problems = read_labelled(str(jsonl), cfg, LabelSettings(), "text")
    assert problems == [
        f"{jsonl}:1: label field 'label' is null; give the row its label or remove it",
        f"{jsonl}:2: text field 'text' is null; fill it or remove the row",
    ]


def test_a_cache_file_cut_short_is_tokenized_again(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", prompt_response_rows(6))
    cfg = DataConfig(train_file=str(path), validation_ratio=0)
    checked = check_data(cfg)
    first = tokenize_data(checked, cfg, Renderer(tokenizer, "chat"), tmp_path)
    cache_file = tmp_path / "tokenized" / f"{first['report']['cache']['key']}.npz"
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # what a power cut can leave of an unsynced file
    again = tokenize_data(checked, cfg, Renderer(tokenizer, "chat"), tmp_path)
    assert again["report"]["cache"]["hit"] is False and again["train"] == first["train"]
    assert tokenize_data(checked, cfg, Renderer(tokenizer, "chat"), tmp_path)["report"]["cache"]["hit"]


def test_library_noise_stays_off_the_screen_unless_verbose(tmp_path):
    """bitsandbytes logs 'Failed to load CPU gemm_4bit_forward' when imported on AVX-512 BF16 CPUs: never shown."""
    import os
    import subprocess
    import sys

    noise = "Failed to load CPU gemm_4bit_forward from kernels-community: no kernels"
    trust = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' (offline)"
    fake = tmp_path / "libraries" / "bitsandbytes"
    fake.mkdir(parents=True)
    # A stand-in that speaks as bitsandbytes does at import, on any CPU (the real one only does on some).
    (fake / "__init__.py").write_text(
        f"import logging, warnings\nlogging.getLogger('bitsandbytes.backends.cpu.ops').warning({noise!r})\n"
        f"logging.getLogger('kernels._internals.hf_hub').warning({trust!r})\n"
        "warnings.warn('bitsandbytes: a library UserWarning', UserWarning)\n"
    )
    data = write_jsonl(tmp_path / "d.jsonl", prompt_response_rows(3))
    script = (
        "import sys\nfrom tunesmith.cli import main\ncode = main(sys.argv[1:])\n"
        "print('bitsandbytes imported by the command:', 'bitsandbytes' in sys.modules)\n"
        "import bitsandbytes  # as peft does inside `train`: the library speaks at import\n"
        "sys.exit(code)\n"
    )
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}

    def tunesmith(*args):
        result = subprocess.run(
            [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout + result.stderr

    quiet = tunesmith("data", "check", str(data))
    assert "all rows valid" in quiet and "bitsandbytes imported by the command: False" in quiet
    assert "gemm_4bit_forward" not in quiet and "UserWarning" not in quiet and "publisher trust" not in quiet
    verbose = tunesmith("--verbose", "data", "check", str(data))
    assert noise in verbose and trust in verbose and "a library UserWarning" in verbose


def test_json_python_cannot_hold_is_a_bad_row_not_a_crash(tmp_path):
    good = json.dumps({"prompt": "p", "response": "r"})
    lines = [good, '{"prompt": "p", "response": "r", "n": ' + "9" * 5000 + "}", "[" * 100000 + "]" * 100000]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    checked = check_data(DataConfig(train_file=str(path), on_error="skip", validation_ratio=0))
    assert checked.problems == [
        f"{path}:2: JSON value holds a number too long to read; shorten it",
        f"{path}:3: JSON value nested too deeply; shorten it",
    ]
    array = tmp_path / "d.json"
    array.write_text(f"[\n{good},\n" + '{"n": ' + "9" * 5000 + "}\n]")
    checked = check_data(DataConfig(train_file=str(array), on_error="skip", validation_ratio=0))
    assert checked.problems == [
        f"{array}:3: JSON value holds a number too long to read; shorten it; the rest of the file was not read"
    ]


# -- token lengths in `data check` ------------------------------------------------------------------------


def test_data_check_of_a_bare_file_says_lengths_were_not_checked(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", prompt_response_rows(4))
    assert api.check_data(path).report["lengths"] == {
        "checked": False,
        "reason": "token lengths not checked: a data file alone names no tokenizer; to count rows over "
        "data.max_length, run `tunesmith data check CONFIG.yaml` with the config whose model.name you will train",
    }
    assert main(["data", "check", str(path)]) == 0
    assert "token lengths not checked" in capsys.readouterr().out


def test_data_check_with_a_config_counts_rows_over_max_length_per_split(
    tmp_path, make_config, tokenizer, capsys
):
    rows = prompt_response_rows(12)
    rows[4] = {"prompt": "the cat sat on the mat " * 6, "response": "rain"}  # line 5: long
    rows[9] = {"prompt": "dogs ran to the park and birds sang " * 8, "response": "sun"}  # line 10: longest
    validation = [
        {"prompt": "market shares rose and fell " * 7, "response": "news"},
        *prompt_response_rows(3, 1),
    ]
    raw = make_config()
    raw["data"] |= {
        "train_file": str(write_jsonl(tmp_path / "train.jsonl", rows)),
        "validation_file": str(write_jsonl(tmp_path / "val.jsonl", validation)),
        "max_length": 40,
    }
    cfg = config_from_dict(raw)
    report = api.check_data(cfg).report["lengths"]
    # What training would do with the same tokenizer: the counts must agree with it.
    checked = check_data(cfg.data)
    trained = tokenize_data(checked, cfg.data, Renderer(tokenizer, cfg.data.template), None)["report"]
    over = trained["over_max_length"]
    assert report["train"]["over_max_length"] == over["train"]["count"] == 2
    assert report["validation"]["over_max_length"] == over["validation"]["count"] == 1
    assert report["train"]["examples"] == 12 and report["validation"]["examples"] == 4
    train_file = raw["data"]["train_file"]
    assert [line.split(": ")[0] for line in report["train"]["longest"][:2]] == [
        f"{train_file}:10",
        f"{train_file}:5",
    ]
    longest_tokens = int(report["train"]["longest"][0].split(": ")[1].split()[0])
    assert longest_tokens == max(int(item.split(": ")[1].split()[0]) for item in over["train"]["list"])
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["data", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        f"train: 2 of 12 rows over max_length=40 (data.on_overflow: {cfg.data.on_overflow}); longest: {train_file}:10: "
        in out
    )
