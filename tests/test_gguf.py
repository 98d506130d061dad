"""GGUF export: a tiny Llama run written as GGUF reloads with the same logits, keeps training's token ids, and refuses
what it cannot prove; llama.cpp itself (llama-cpp-python) answers as `tunesmith generate` does.

`make setup` builds llama-cpp-python, so its tests fail without it rather than skip; TUNESMITH_WITHOUT_LLAMA_CPP=1
says on purpose that this machine has no llama.cpp runtime, and only then are they skipped."""

import json
import os
import re
from pathlib import Path

import pytest

from conftest import CHATML, build_tokenizer, tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError


def require_llama_cpp() -> None:
    """Fail (or skip, when TUNESMITH_WITHOUT_LLAMA_CPP=1 says so) where llama-cpp-python cannot be imported."""
    if os.environ.get("TUNESMITH_WITHOUT_LLAMA_CPP") == "1":
        pytest.skip("TUNESMITH_WITHOUT_LLAMA_CPP=1: this machine has no llama.cpp runtime on purpose")
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"llama-cpp-python cannot be imported ({exc}): `make setup` builds it; set "
            "TUNESMITH_WITHOUT_LLAMA_CPP=1 to skip the llama.cpp runtime tests on purpose"
        )


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("gguf-lm")
    raw = tiny_config(
        folder, tiny_model, 24, train={"max_steps": 2}, eval={"samples": 0, "max_new_tokens": 12}
    )
    return api.train(config_from_dict(raw))["run_dir"]


@pytest.fixture(scope="module")
def f32_export(lm_run):
    return api.export(lm_run, "gguf", quantize="f32")


def test_f32_gguf_reloads_with_the_merged_models_logits(f32_export, lm_run):
    folder = Path(f32_export["output"])
    record = json.loads((folder / "export.json").read_text())
    reload = record["checks"]["reload"]
    assert reload["max_abs_logit_difference_vs_stored_weights"] < 1e-4
    assert reload["top1_agreement"] == 1.0 and reload["mean_kl"] < 1e-6
    assert reload["tokens"] > 100  # whole validation conversations, not one probe
    assert record["merge"]["max_abs_logit_difference"] < 1e-4  # the LoRA adapter was merged, with its check
    assert record["file"] == f"{Path(lm_run).name.lower()}-f32.gguf" and (folder / record["file"]).exists()
    assert record["tensor_types"] == {
        "F32": 2 * 9 + 3
    }  # 9 tensors per block, embeddings, norm, untied output


def test_gguf_metadata_carries_the_runs_template_and_stop_tokens(f32_export):
    from gguf import GGUFReader

    folder = Path(f32_export["output"])
    fields = GGUFReader(str(folder / f32_export["file"])).fields
    tokenizer = build_tokenizer()
    assert fields["tokenizer.chat_template"].contents() == CHATML
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert tokens == [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    # chat templates write BOS themselves: llama.cpp must not add one
    assert bool(fields["tokenizer.ggml.add_bos_token"].contents()) is False


def test_embedded_template_gives_trainings_token_ids(f32_export):
    template = f32_export["checks"]["template"]
    assert template["prompts"] == 5 and template["equal"] == 5  # every validation prompt of the run


def test_ollama_modelfile_renders_the_runs_chatml(f32_export):
    folder = Path(f32_export["output"])
    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{f32_export['file']}\n")
    assert 'PARAMETER stop """<|im_end|>"""' in modelfile
    assert (
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in modelfile
    )  # Go template from the run's Jinja
    assert modelfile.rstrip().endswith("PARAMETER temperature 0")
    assert f32_export["ollama_template"] == {
        "written": True,
        "conversations_checked": 5,
        "equal": 5,
        "multi_turn_equal": True,
    }
    assert "ollama create" in (folder / "README.md").read_text()


def test_go_template_parts_reproduce_a_template_with_a_default_system_prompt():
    from tunesmith.export.chat_template import render
    from tunesmith.export.ollama import template_parts

    smollm2 = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    parts = template_parts(smollm2, "", "<|im_end|>")
    assert parts.opening_without_system == "<|im_start|>system\nYou are helpful<|im_end|>\n"
    for conversation in [
        (("user", "Hi"),),
        (("system", "Be brief."), ("user", "Hi"), ("assistant", "Yo"), ("user", "?")),
    ]:
        assert parts.render(conversation) == render(smollm2, conversation, True, "", "<|im_end|>")


def test_classic_template_prompt_equals_the_renderer(tmp_path, tiny_model):
    from tunesmith.data.templates import Renderer
    from tunesmith.export.chat_template import render, run_template

    renderer = Renderer(build_tokenizer(), "classic")
    prompt = (("system", "Be brief."), ("user", "Write a headline"))
    template = run_template(renderer)
    assert render(template, prompt, True, "", "<|im_end|>") == renderer.prompt(prompt)
    conversation = (*prompt, ("assistant", "Rain"), ("user", "Another"))
    assert render(template, conversation, True, "", "<|im_end|>") == renderer.prompt(conversation)


def test_q8_0_is_gated_by_kl_and_refused_past_the_threshold(lm_run, f32_export, tmp_path):
    result = api.export(lm_run, "gguf", output=tmp_path / "q8", quantize="q8_0")
    reload = result["checks"]["reload"]
    assert 0 < reload["mean_kl"] < reload["max_kl"] == 1e-2  # measured, and under the default gate
    assert result["tensor_types"]["Q8_0"] == 2 * 7 + 2  # every matrix (rows of 32 or 64 values)
    assert (
        result["files"][result["file"]]
        < 0.45 * (Path(f32_export["output"]) / f32_export["file"]).stat().st_size
    )
    with pytest.raises(TunesmithError, match=r"refused: mean KL .* > max_kl 1e-09"):
        api.export(lm_run, "gguf", output=tmp_path / "strict", quantize="q8_0", max_kl=1e-9)
    assert not (tmp_path / "strict").exists() and not (tmp_path / "strict.partial").exists()


def test_gguf_refuses_an_unsupported_architecture(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tunesmith.export.gguf_writer import architecture_of

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(TunesmithError, match="architecture GPT2LMHeadModel is not supported"):
        architecture_of(model)


def test_gguf_refusals_are_one_line(lm_run, tmp_path):
    with pytest.raises(TunesmithError, match="GGUF export writes"):
        api.export(lm_run, "gguf", quantize="int8")
    taken = tmp_path / "taken"  # its own folder: the module's f32 export may run before or after this test
    taken.mkdir()
    with pytest.raises(TunesmithError, match="already exists"):
        api.export(lm_run, "gguf", output=taken, quantize="f32")
    assert list(taken.iterdir()) == []


def test_k_quants_need_llama_cpps_quantizer(lm_run, tmp_path, monkeypatch):
    import shutil
    import sys

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now fails as if not installed
    with pytest.raises(TunesmithError, match="k-quants need llama.cpp's quantizer"):
        api.export(lm_run, "gguf", output=tmp_path / "q4", quantize="q4_k_m")
    assert not (tmp_path / "q4").exists()


def test_llama_cpp_answers_as_tunesmith_generate(f32_export):
    require_llama_cpp()
    runtime = f32_export["checks"]["llama_cpp"]
    assert runtime["checked"] is True and runtime["runtime"] == "llama-cpp-python 0.3.36"
    assert runtime["prompts"] == 5
    assert runtime["greedy_equal_tokens"] == 5  # token for token, at f32
    assert runtime["stopped_at_end_token"]["llama_cpp"] == runtime["stopped_at_end_token"]["tunesmith"]
    # llama-cpp-python's own chat formatter on the file's template, then llama.cpp's tokenizer: training's ids
    assert f32_export["checks"]["template"]["equal_in_llama_cpp"] == 5


def test_f16_llama_cpp_answers_equal_tunesmith_generate_up_to_ties(lm_run, tmp_path):
    require_llama_cpp()
    result = api.export(lm_run, "gguf", output=tmp_path / "f16", quantize="f16")
    runtime = result["checks"]["llama_cpp"]
    assert runtime["checked"] is True and runtime["tie_margin"] == 0.02
    assert runtime["greedy_equal_up_to_ties"] == runtime["prompts"] == 5
    assert result["tensor_types"]["F16"] == 2 * 7 + 2  # every matrix at f16, as llama.cpp ran it


def test_k_quants_go_through_llama_cpps_quantizer_and_the_same_gate(lm_run, tmp_path):
    require_llama_cpp()
    result = api.export(lm_run, "gguf", output=tmp_path / "q4", quantize="q4_k_m")
    assert result["quantizer"].startswith("llama-cpp-python") or result["quantizer"].endswith(
        "llama-quantize"
    )
    reload = result["checks"]["reload"]
    assert 0 < reload["mean_kl"] < reload["max_kl"] == 0.1  # measured on the file llama.cpp's quantizer wrote
    assert result["checks"]["llama_cpp"]["checked"] is True
    assert not list((tmp_path / "q4").glob("*.tmp.gguf"))  # the f16 intermediate is gone


def test_an_export_llama_cpp_could_not_run_says_not_checked_and_claims_no_proof(
    lm_run, tmp_path, monkeypatch, capsys
):
    import sys

    from tunesmith import cli
    from tunesmith.export.gguf_checks import NOT_CHECKED

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now fails as if not installed
    folder = tmp_path / "f32"
    argv = ["--verbose", "export", lm_run, "--format", "gguf", "--quantize", "f32", "--output", str(folder)]
    assert cli.main(argv) == 0
    screen = capsys.readouterr().out
    runtime = json.loads((folder / "export.json").read_text())["checks"]["llama_cpp"]
    assert runtime["checked"] is False and "greedy_equal_tokens" not in runtime
    readme = (folder / "README.md").read_text()
    said = {
        "screen": next(line for line in screen.splitlines() if "llama_cpp:" in line),
        "export.json": runtime["verdict"],
        "README.md": next(line for line in readme.splitlines() if "llama.cpp runtime" in line),
    }
    for where, line in said.items():
        assert NOT_CHECKED in line, where
        assert not re.search(r"prov|proof|passed|equal|greedy answers|skipped", line, re.IGNORECASE), where


def test_a_llama_cpp_answer_is_the_models_greedy_one_up_to_ties(tiny_model):
    """The runtime check's tie rule: llama.cpp's own answer read back through the tuned model in one forward; its
    greedy tokens fall 0 below the best logit, the second-best token exactly the gap between the two."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.export.gguf_checks import largest_shortfall

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompt = [5, 9, 13, 2]
    answer = []
    with torch.no_grad():  # greedy through whole forwards, as the check reads answers back
        for _ in range(6):
            answer.append(int(model(torch.tensor([prompt + answer])).logits[0, -1].argmax()))
    assert largest_shortfall(model, prompt, answer, None) == 0.0
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer[:2]])).logits[0, -1]
    top = logits.topk(2)
    changed = answer[:2] + [int(top.indices[1])]  # the runner-up where greedy took the best
    gap = (top.values[0] - top.values[1]).item()
    assert largest_shortfall(model, prompt, changed, None) == pytest.approx(gap, abs=1e-5)
    ended = largest_shortfall(
        model, prompt, answer[:3], end=answer[3]
    )  # an end token is read back like the rest
    assert ended == 0.0
