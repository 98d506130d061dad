"""train.kernels: the chunked linear + cross-entropy against the plain reference, through the Trainer, and the
decision auto makes and records."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, TrainingArguments

from tunesmith.config import KERNEL_NAMES, load_config
from tunesmith.data.collate import IGNORE, PackedCollator, PadCollator, pack
from tunesmith.data.prepare import encode
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.data.validate import Example
from tunesmith.errors import TunesmithError
from tunesmith.training import kernels
from tunesmith.training.linear_cross_entropy import chunked_linear_cross_entropy
from tunesmith.training.loop import CausalLMTrainer


def reference(hidden, weight, targets):
    """Plain logits and F.cross_entropy with ignore_index -100, summed."""
    logits = (hidden @ weight.T).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def loss_and_grads(loss_of, hidden, weight, targets):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    loss = loss_of(hidden, weight, targets)
    (loss / 7).backward()  # a scale that is not 1: backward must use the incoming gradient
    return loss.detach(), hidden.grad, weight.grad


def rows_and_targets(rows=45, hidden=24, vocabulary=97, seed=0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=generator)
    w = torch.randn(vocabulary, hidden, generator=generator) / hidden**0.5
    t = torch.randint(0, vocabulary, (rows,), generator=generator)
    t[:10] = IGNORE  # with chunks of 8, the first chunk is all ignored and the second half ignored
    t[[17, 30, 31]] = IGNORE
    return h, w, t


@pytest.mark.parametrize("chunk_rows", [8, 13, 45, 1000])
def test_chunked_linear_cross_entropy_equals_the_reference_in_loss_and_gradients(chunk_rows):
    hidden, weight, targets = rows_and_targets()
    want = loss_and_grads(reference, hidden, weight, targets)
    got = loss_and_grads(
        lambda h, w, t: chunked_linear_cross_entropy(h, w, t, chunk_rows=chunk_rows), hidden, weight, targets
    )
    assert abs(got[0] - want[0]) / want[0] < 1e-5
    assert torch.allclose(got[1], want[1], atol=1e-5, rtol=0)
    assert torch.allclose(got[2], want[2], atol=1e-5, rtol=0)
    assert got[1][:10].abs().max() == 0  # ignored rows get no gradient


def test_chunked_linear_cross_entropy_of_only_ignored_rows_is_zero_with_zero_gradients():
    hidden, weight, targets = rows_and_targets()
    loss, grad_hidden, grad_weight = loss_and_grads(
        lambda h, w, t: chunked_linear_cross_entropy(h, w, torch.full_like(t, IGNORE), chunk_rows=8),
        hidden,
        weight,
        targets,
    )
    assert loss == 0 and grad_hidden.abs().max() == 0 and grad_weight.abs().max() == 0


def test_chunked_linear_cross_entropy_with_a_frozen_head_gives_the_hidden_gradient_alone():
    hidden, weight, targets = rows_and_targets()
    h = hidden.clone().requires_grad_()
    chunked_linear_cross_entropy(h, weight, targets, chunk_rows=8).backward()
    reference_hidden = hidden.clone().requires_grad_()
    reference(reference_hidden, weight, targets).backward()
    assert torch.allclose(h.grad, reference_hidden.grad, atol=1e-5, rtol=0)


def test_chunked_linear_cross_entropy_under_bf16_autocast_matches_fp32_within_bf16_tolerance():
    hidden, weight, targets = rows_and_targets(rows=64, hidden=64, vocabulary=300)
    want = loss_and_grads(reference, hidden, weight, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_and_grads(
            lambda h, w, t: chunked_linear_cross_entropy(h, w, t, chunk_rows=16), hidden, weight, targets
        )
        plain_bf16 = loss_and_grads(reference, hidden, weight, targets)
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32  # fp32 leaves get fp32 gradients
    assert abs(got[0] - want[0]) / want[0] < 1e-2
    assert abs(got[0] - plain_bf16[0]) / plain_bf16[0] < 1e-3  # the same bf16 product as the plain head's
    for mine, exact in zip(got[1:], want[1:], strict=True):
        cosine = torch.nn.functional.cosine_similarity(mine.flatten(), exact.flatten(), dim=0)
        assert cosine > 0.99
        assert (mine.norm() - exact.norm()).abs() / exact.norm() < 0.03


CONVERSATIONS = [
    (("user", "the cat sat on"), ("assistant", "a mat")),
    (("user", "dogs ran to the park and birds sang songs"), ("assistant", "about rain and sun")),
    (("user", "write headline"), ("assistant", "market shares rose fell")),
]


def trainer_for(tmp_path, tiny_model, method: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # non-zero B so the adapters carry gradient
                torch.nn.init.normal_(parameter, std=0.02)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = CausalLMTrainer(model=model, args=args)
    trainer.lm_head = model.get_output_embeddings()
    return trainer, model


def trainer_loss_and_grads(trainer, model, batch, head_loss):
    trainer.head_loss = head_loss
    model.zero_grad()
    count = batch["labels"][:, 1:].ne(IGNORE).sum()
    widths = []  # the last dimension the head hands back: the vocabulary, or the hidden size for chunked_ce
    hook = trainer.lm_head.register_forward_hook(lambda module, args, out: widths.append(out.shape[-1]))
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=count)
    hook.remove()
    loss.backward()
    expected = model.config.hidden_size if head_loss == "chunked_ce" else model.config.vocab_size
    assert widths == [expected]
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_chunked_head_loss_in_the_trainer_equals_the_sparse_head(
    tmp_path, tiny_model, tokenizer, method, packed
):
    trainer, model = trainer_for(tmp_path, tiny_model, method)
    items = [encode(Example("x", c), Renderer(tokenizer, "chat"), LossMask()) for c in CONVERSATIONS]
    collate = PackedCollator(tokenizer.pad_token_id) if packed else PadCollator(tokenizer.pad_token_id)
    batch = collate(pack(items, 40) if packed else items)
    sparse_loss, sparse_grads = trainer_loss_and_grads(trainer, model, batch, "sparse_head")
    chunked_loss, chunked_grads = trainer_loss_and_grads(trainer, model, batch, "chunked_ce")
    assert abs(chunked_loss - sparse_loss) / sparse_loss < 1e-5
    assert set(chunked_grads) == set(sparse_grads)
    if method == "full":
        assert "lm_head.weight" in chunked_grads  # the head trains, and its gradient comes from the kernel
    for name, grad in sparse_grads.items():
        assert torch.allclose(chunked_grads[name], grad, atol=1e-5, rtol=1e-4), name
    assert model.get_output_embeddings()(torch.zeros(1, 32)).shape[-1] == len(tokenizer)  # the head is back


def test_kernel_names_in_the_config_are_the_ones_training_implements():
    assert set(KERNEL_NAMES) == {*kernels.HEAD_LOSSES, *kernels.LIGER_LAYERS} - {"sparse_head"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("chunked_cee", "train.kernels: unknown kernel 'chunked_cee'; did you mean 'chunked_ce'?"),
        (["chunked_ce", "liger_ce"], "train.kernels: chunked_ce and liger_ce are two ways"),
        (["flash"], "train.kernels: unknown kernel 'flash'; use auto, off or a list of chunked_ce"),
    ],
)
def test_kernels_config_refuses_unknown_or_conflicting_names_in_one_line(
    tmp_path, make_config, value, message
):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(make_config(train={"kernels": value})))
    with pytest.raises(TunesmithError) as raised:
        load_config(path)
    lines = [line.strip() for line in str(raised.value).splitlines() if "train.kernels" in line]
    assert len(lines) == 1 and lines[0].startswith(message)


def test_a_bare_off_in_yaml_means_off(tmp_path, make_config):
    import yaml

    path = tmp_path / "off.yaml"
    path.write_text(yaml.safe_dump(make_config()).replace("train:\n", "train:\n  kernels: off\n"))
    assert "  kernels: off\n" in path.read_text()  # YAML reads it as False
    assert load_config(path).train.kernels == "off"
    assert load_config(path, ["train.kernels=on"]).train.kernels == "auto"  # --set reads YAML too


def test_kernels_config_takes_auto_off_a_name_or_a_list(tmp_path, make_config):
    for value, expected in [
        ("auto", "auto"),
        ("off", "off"),
        ("chunked_ce", ["chunked_ce"]),
        (["liger_rope", "chunked_ce"], ["liger_rope", "chunked_ce"]),
    ]:
        path = tmp_path / "ok.yaml"
        path.write_text(json.dumps(make_config(train={"kernels": value})))
        assert load_config(path).train.kernels == expected


def decide(model, setting, free=64 * 2**30, sparse=True, cache_dir=None, rows=None):
    rows = rows or [{"labels": [IGNORE] * 6 + [5, 6, 7]}, {"labels": [IGNORE] * 3 + [5, 6]}]
    return kernels.decide_kernels(setting, model, "fp32", rows, 2, sparse, False, cache_dir, free)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's reasons")
def test_liger_is_skipped_on_the_cpu_with_its_reason_and_refused_when_asked_for(tiny_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    decision = decide(model, "auto", cache_dir=tmp_path)
    assert decision["liger"] == []
    for name in ("liger_rms_norm", "liger_rope", "liger_swiglu", "liger_ce"):
        assert decision["skipped"][name] == "needs a CUDA GPU (Triton kernels); this run is on the CPU"
    assert set(decision["probe"]["seconds"]) == {"sparse_head", "chunked_ce"}  # liger_ce not timed
    with pytest.raises(TunesmithError, match="train.kernels: liger_swiglu cannot run here: needs a CUDA GPU"):
        decide(model, ["liger_swiglu"])


def test_explicit_and_off_settings_are_taken_without_a_probe(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert decide(model, ["chunked_ce"])["head_loss"] == "chunked_ce"
    assert decide(model, "off") == {"head_loss": "sparse_head", "liger": [], "reason": "off in the config"}
    with pytest.raises(TunesmithError, match="chunked_ce cannot run here: it works at the sparse LM head"):
        decide(model, ["chunked_ce"], sparse=False)


def test_supervised_shapes_count_the_plain_heads_rows_and_the_supervised_ones():
    rows = [
        {"labels": [IGNORE, IGNORE, IGNORE, 4, 5]},  # supervised targets at shifted positions 2, 3
        {"labels": [IGNORE, 4, 5, IGNORE, IGNORE, IGNORE]},  # at 0, 1
    ]
    # the plain sparse head projects positions 0-3 of both rows: 8 rows; 4 of them are supervised
    assert kernels.supervised_shapes(rows, 2) == {"plain_rows": 8, "supervised_rows": 4}


PROBE = {"rows": 100, "seconds": {"sparse_head": 1.0, "chunked_ce": 1.5}}


def test_auto_keeps_the_plain_head_when_the_chunked_one_is_predicted_slower():
    rows = {"plain_rows": 100, "supervised_rows": 90}
    decision = kernels.pick_head_loss(PROBE, rows, 1000, free=2**40)
    assert decision["head_loss"] == "sparse_head"
    assert decision["predicted_seconds"] == pytest.approx({"sparse_head": 1.0, "chunked_ce": 1.35})
    assert decision["reason"].startswith("sparse_head: no other head loss measured 1.1x faster")


def test_auto_takes_the_chunked_head_when_fewer_rows_make_it_faster():
    rows = {"plain_rows": 400, "supervised_rows": 100}  # the plain head projects 4x the supervised rows
    decision = kernels.pick_head_loss(PROBE, rows, 1000, free=2**40)
    assert decision["head_loss"] == "chunked_ce"
    assert decision["reason"].startswith("chunked_ce: measured faster")


def test_auto_saves_memory_at_a_loss_of_speed_only_when_the_logits_would_not_fit():
    rows = {"plain_rows": 100, "supervised_rows": 90}
    needed = kernels.logits_bytes(100, 1000)
    assert (
        kernels.pick_head_loss(PROBE, rows, 1000, free=int(needed / 0.25) + 1)["head_loss"] == "sparse_head"
    )
    tight = kernels.pick_head_loss(PROBE, rows, 1000, free=int(needed / 0.25) - 1)
    assert tight["head_loss"] == "chunked_ce"
    assert "would exceed 25% of free memory" in tight["reason"]


def test_a_tiny_run_records_the_auto_decision_in_run_json(make_config, tmp_path):
    from tunesmith import api

    path = tmp_path / "run.yaml"
    raw = make_config(train={"max_steps": 2, "eval_steps": 2}, eval={"samples": 0, "before_training": False})
    path.write_text(json.dumps(raw))
    summary = api.train(str(path))
    record = json.loads((tmp_path / "runs" / summary["run_dir"].split("/")[-1] / "run.json").read_text())
    decision = record["kernels"]
    assert decision["head_loss"] in {"sparse_head", "chunked_ce"}
    assert decision["reason"].startswith(f"auto: {decision['head_loss']}")
    assert set(decision["probe"]["seconds"]) == {"sparse_head", "chunked_ce"}
    assert all(seconds > 0 for seconds in decision["probe"]["seconds"].values())
    assert decision["supervised_rows"] <= decision["plain_rows"]
    assert (tmp_path / "cache" / "kernels-probe").is_dir()  # cached per host and shapes


SHAPE = {"hidden_size": 16, "vocabulary": 50, "precision": "fp32", "train_head": False, "weights": "float32"}


def test_the_probe_is_measured_once_per_host_and_shape_then_read_from_the_cache(tmp_path):
    first = kernels.probe_head_losses(["sparse_head", "chunked_ce"], SHAPE, tmp_path)
    again = kernels.probe_head_losses(["sparse_head", "chunked_ce"], SHAPE, tmp_path)
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["seconds"] == first["seconds"] and set(first["seconds"]) == {"sparse_head", "chunked_ce"}
    wider = kernels.probe_head_losses(["sparse_head", "chunked_ce"], SHAPE | {"vocabulary": 60}, tmp_path)
    assert wider["cached"] is False


def test_a_kernel_that_fails_in_the_probe_is_left_out_with_its_error(monkeypatch):
    def broken(hidden, weight, targets):
        raise RuntimeError("triton: no CUDA device")

    monkeypatch.setitem(kernels.HEAD_LOSSES, "liger_ce", broken)
    probe = kernels.probe_head_losses(["sparse_head", "liger_ce"], SHAPE, None)
    assert set(probe["seconds"]) == {"sparse_head"}
    assert probe["failed"] == {"liger_ce": "RuntimeError: triton: no CUDA device"}
    rows = {"plain_rows": 400, "supervised_rows": 10}
    assert kernels.pick_head_loss(probe, rows, 50, free=2**40)["head_loss"] == "sparse_head"


def test_an_adapted_lm_head_keeps_the_plain_head_loss(tiny_model, tmp_path):
    """chunked_ce projects with the head's weight alone: a LoRA on the head would be left out, so it is refused."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(
        TunesmithError, match="chunked_ce cannot run here: the LM head is a peft.tuners.lora.layer.Linear"
    ):
        decide(model, ["chunked_ce"])
    decision = decide(model, "auto", cache_dir=tmp_path)
    assert decision["head_loss"] == "sparse_head" and "chunked_ce" in decision["skipped"]
    assert set(decision["probe"]["seconds"]) == {"sparse_head"}


def test_an_explicit_kernel_list_is_refused_for_a_task_that_is_not_a_causal_lm(make_config):
    from tunesmith.config import config_from_dict

    raw = make_config(train={"kernels": ["chunked_ce"]})
    raw["task"] = "text-classification"
    with pytest.raises(
        TunesmithError, match="train.kernels: the LM head's loss and Liger kernels are for causal"
    ):
        config_from_dict(raw)
    raw["train"]["kernels"] = "auto"  # auto and off stay valid for every task
    assert config_from_dict(raw).train.kernels == "auto"
