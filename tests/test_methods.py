"""Every registered method on every task it can serve (peft's TEST_CASES matrix): adding a method adds rows.

For each (method, task) row, on a tiny in-process model of the task's kind: the trainable-parameter count equals
one computed independently from the architecture, one optimizer step changes exactly the trainable weights, and
saving then reloading the way the method reloads a finished run (Method.reload) gives identical outputs.
"""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import MethodConfig
from tunesmith.methods import count_parameters
from tunesmith.registry import METHODS, TASKS, load_plugins

LABELS = 3
R = 4


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=LABELS,
    )
    return BertForSequenceClassification(config)


def _bert_tokens():
    from transformers import BertConfig, BertForTokenClassification

    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=LABELS,
    )
    return BertForTokenClassification(config)


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=LABELS,
    )
    return ViTForImageClassification(config)


def _whisper():
    from transformers import WhisperConfig, WhisperForAudioClassification

    config = WhisperConfig(
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=32,
        max_source_positions=8,
        classifier_proj_size=16,
        num_labels=LABELS,
    )
    return WhisperForAudioClassification(config)


def _t5():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=128,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config)


def _whisper_asr():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=128,
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        max_source_positions=8,
        max_target_positions=16,
        pad_token_id=0,
        decoder_start_token_id=1,
    )
    return WhisperForConditionalGeneration(config)


def _batch(kind: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 2])
    if kind == "AutoModelForCausalLM":
        ids = torch.randint(0, 128, (2, 10), generator=generator)
        return {"input_ids": ids, "labels": ids}
    if kind == "AutoModelForSeq2SeqLM":
        ids = torch.randint(1, 128, (2, 10), generator=generator)
        targets = torch.randint(1, 128, (2, 4), generator=generator)
        return {"input_ids": ids, "decoder_input_ids": targets, "labels": targets}
    if kind == "AutoModelForSequenceClassification":
        return {"input_ids": torch.randint(0, 128, (2, 10), generator=generator), "labels": labels}
    if kind == "AutoModelForTokenClassification":  # a tag per token
        ids = torch.randint(0, 128, (2, 10), generator=generator)
        return {"input_ids": ids, "labels": torch.randint(0, LABELS, (2, 10), generator=generator)}
    if kind == "AutoModelForImageClassification":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=generator), "labels": labels}
    if kind == "AutoModelForSpeechSeq2Seq":
        targets = torch.randint(2, 128, (2, 4), generator=generator)
        features = torch.randn(2, 16, 16, generator=generator)
        return {"input_features": features, "decoder_input_ids": targets, "labels": targets}
    return {"input_features": torch.randn(2, 16, 16, generator=generator), "labels": labels}


# Per kind of model: how to build it, the prefixes of its head, and what last_n=1 trains (the last block
# and everything after the blocks), written out from the architecture rather than from tunesmith's code.
MODELS = {
    "AutoModelForCausalLM": (_llama, ["lm_head."], ["model.layers.1.", "model.norm.", "lm_head."]),
    # T5: the LM head is tied to the shared embedding (its weight is named shared.weight); the largest stack is
    # the decoder's (its blocks add cross-attention), followed by its final norm.
    "AutoModelForSeq2SeqLM": (
        _t5,
        ["lm_head.", "shared."],
        ["decoder.block.1.", "decoder.final_layer_norm.", "shared."],
    ),
    # Whisper: the vocabulary projection proj_out is tied to the decoder's token embedding; the largest stack is
    # the decoder's (cross-attention), followed by its final norm.
    "AutoModelForSpeechSeq2Seq": (
        _whisper_asr,
        ["proj_out.", "model.decoder.embed_tokens."],
        ["model.decoder.layers.1.", "model.decoder.layer_norm.", "model.decoder.embed_tokens."],
    ),
    "AutoModelForSequenceClassification": (
        _bert,
        ["classifier."],
        ["bert.encoder.layer.2.", "bert.pooler.", "classifier."],
    ),
    # A tagger: BERT without its pooler, a linear tag head on every token.
    "AutoModelForTokenClassification": (
        _bert_tokens,
        ["classifier."],
        ["bert.encoder.layer.2.", "classifier."],
    ),
    "AutoModelForImageClassification": (
        _vit,
        ["classifier."],
        ["vit.layers.1.", "vit.layernorm.", "classifier."],
    ),
    "AutoModelForAudioClassification": (
        _whisper,
        ["projector.", "classifier."],
        ["encoder.layers.1.", "encoder.layer_norm.", "projector.", "classifier."],
    ),
}


def _size(model, prefixes: list[str]) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(tuple(prefixes)))


def _lora_size(model, dora: bool) -> int:
    """r x (in + out) per adapted Linear (+ out magnitudes for DoRA): causal LMs adapt every Linear but the
    LM head; classifiers adapt the body's Linears and train a full copy of the head."""
    # the LM head (tied to the token embedding) is not copied
    causal = _kind(model) in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForSpeechSeq2Seq")
    heads = MODELS[_kind(model)][1]
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.startswith(tuple(p.rstrip(".") for p in heads)):
            total += R * (module.in_features + module.out_features) + (module.out_features if dora else 0)
    return total + (0 if causal else _size(model, heads))


def _kind(model) -> str:
    name = model.__class__.__name__
    return {
        "LlamaForCausalLM": "AutoModelForCausalLM",
        "T5ForConditionalGeneration": "AutoModelForSeq2SeqLM",
        "WhisperForConditionalGeneration": "AutoModelForSpeechSeq2Seq",
        "BertForSequenceClassification": "AutoModelForSequenceClassification",
        "BertForTokenClassification": "AutoModelForTokenClassification",
        "ViTForImageClassification": "AutoModelForImageClassification",
        "WhisperForAudioClassification": "AutoModelForAudioClassification",
    }[name]


def expected_trainable(method: str, model) -> int:
    heads, last = MODELS[_kind(model)][1:]
    return {
        "full": sum(p.numel() for p in model.parameters()),
        "head": _size(model, heads),
        "last_n": _size(model, last),
        "freeze": _size(model, last),
        "lora": _lora_size(model, dora=False),
        "qlora": _lora_size(model, dora=False),
        "dora": _lora_size(model, dora=True),
        "features": 0,
    }[method]


def matrix() -> list:
    load_plugins()
    rows = []
    for method in METHODS.values():
        for task in TASKS.values():
            if method.needs <= task.provides and task.auto_class in MODELS:
                rows.append(pytest.param(method.name, task.name, id=f"{method.name}-{task.name}"))
    return rows


def _outputs(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.parametrize(("method_name", "task_name"), matrix())
def test_method_on_task(method_name, task_name, tmp_path):
    from transformers import AutoConfig

    method, task = METHODS[method_name], TASKS[task_name]
    build = MODELS[task.auto_class][0]
    torch.manual_seed(0)
    base = build()
    base.save_pretrained(tmp_path / "base")
    cfg = MethodConfig(name=method_name, last_n=1, lora={"r": R, "alpha": 8, "dropout": 0.0})

    import transformers

    auto = getattr(transformers, task.auto_class)
    quantization = method.quantization_config(cfg)
    if quantization is not None:
        pytest.importorskip("bitsandbytes")
    model = auto.from_pretrained(tmp_path / "base", quantization_config=quantization)
    reference = build()  # the same architecture in full precision, for the independent count
    model = method.apply(model, cfg)

    assert count_parameters(model)["trainable"] == expected_trainable(method_name, reference)

    batch = _batch(task.auto_class)
    with torch.no_grad():  # as after some training: a LoRA B of zeros would give its A no gradient
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if trainable:
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        model(**batch).loss.backward()
        optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}
    assert changed == trainable

    expected = _outputs(model, batch)
    model.save_pretrained(tmp_path / "tuned")
    if not method.is_adapter:
        assert AutoConfig.from_pretrained(tmp_path / "tuned").architectures
    loaded = []  # what the method asked to load, and how

    def load(weights, quantization_config):
        loaded.append((weights, quantization_config is not None))
        return auto.from_pretrained(weights, quantization_config=quantization_config)

    reloaded = method.reload(load, tmp_path / "tuned", str(tmp_path / "base"), cfg)
    # an adapter over the base as it trained (quantized where the method trains on a quantized base)
    from_base = (str(tmp_path / "base"), quantization is not None)
    assert loaded == [from_base if method.is_adapter else (str(tmp_path / "tuned"), False)]
    assert torch.equal(_outputs(reloaded, batch), expected)


def test_the_matrix_covers_every_method_and_task():
    covered = {(row.values[0], row.values[1]) for row in matrix()}
    assert {m for m, _ in covered} == set(METHODS)
    assert {t for _, t in covered} >= {t.name for t in TASKS.values() if t.auto_class in MODELS}


# Where adapters go, per model shape, written out from peft's and transformers' documentation: generators keep
# their pretrained LM head (and a speech model gets peft's plain wrapper: its forward takes no input_ids);
# a new head trains in full beside adapters on the body.
PLACEMENT = {
    "AutoModelForCausalLM": ("CAUSAL_LM", None),
    "AutoModelForSeq2SeqLM": ("SEQ_2_SEQ_LM", None),
    "AutoModelForSpeechSeq2Seq": (None, None),
    "AutoModelForSequenceClassification": (None, {"classifier"}),
    "AutoModelForTokenClassification": (None, {"classifier"}),
    "AutoModelForImageClassification": (None, {"classifier"}),
    "AutoModelForAudioClassification": (None, {"projector", "classifier"}),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_adapters_are_placed_where_the_models_anatomy_says(kind):
    from tunesmith.methods.lora import LoraSettings, peft_config

    model = MODELS[kind][0]()
    task_type, beside = PLACEMENT[kind]
    config = peft_config(model, LoraSettings(r=R))
    assert config.task_type == task_type
    assert (set(config.modules_to_save) if config.modules_to_save else None) == beside
    if beside:  # all-linear: the body's layers, never the head's
        targets = config.target_modules
        assert targets and not any(name.startswith(tuple(beside)) for name in targets)
    assert peft_config(model, LoraSettings(r=R, target_modules=["query"])).target_modules == {"query"}


def test_each_methods_settings_live_with_it_and_are_mounted_under_method():
    load_plugins()
    owners = {m.name: m.section for m in METHODS.values() if m.section}
    assert owners == {
        "lora": "lora", "dora": "lora", "qlora": "lora", "last_n": "freeze", "freeze": "freeze", "features": "features"
    }  # fmt: skip
    cfg = MethodConfig()  # nothing written: every section's defaults
    for method in METHODS.values():
        if method.section:
            assert method.settings.__module__.startswith("tunesmith.methods.")
            assert method.settings_of(cfg) == cfg.section(method.section) == method.settings()
