"""Preference tuning: losses, rewards and gradients equal TRL's trainers' on one batch; bad rows named by file:line."""

import json
import os

import pytest
import torch

from conftest import WORDS, write_jsonl
from tunesmith.config import DataConfig
from tunesmith.data.collate import IGNORE
from tunesmith.data.templates import Renderer
from tunesmith.errors import TunesmithError
from tunesmith.tasks.preference.data import (
    PreferenceCollator,
    UnpairedCollator,
    check_preference_data,
    tokenize_preference,
)
from tunesmith.tasks.preference.losses import LOSSES, LossSpec
from tunesmith.tasks.preference.settings import PreferenceConfig
from tunesmith.tasks.preference.trainer import PreferenceTrainer

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def preference_rows(count: int, seed: int = 0) -> list[dict]:
    """Pairs a tiny model can learn: chosen answers are short and use the first words, rejected ones the last."""
    import random

    rng = random.Random(seed)
    rows = []
    for index in range(count):
        rows.append(
            {
                "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + f" {index}",
                "chosen": " ".join(rng.choice(WORDS[:10]) for _ in range(rng.randint(1, 4))),
                "rejected": " ".join(rng.choice(WORDS[20:]) for _ in range(rng.randint(5, 9))),
            }
        )
    return rows


def tokenized(tmp_path, tokenizer, pref: PreferenceConfig, rows: list[dict]) -> list[dict]:
    data = DataConfig(train_file=str(write_jsonl(tmp_path / "pairs.jsonl", rows)), validation_ratio=0.0)
    checked = check_preference_data(data, pref)
    items, report = tokenize_preference(checked.train, Renderer(tokenizer), 128, "train")
    assert report["train_answers_without_stop_token"] == 0
    return items


# -- against TRL ---------------------------------------------------------------------------------------------

BETA = 0.3
SFT_WEIGHT = 0.7


def lora_config():
    from peft import LoraConfig

    # init_lora_weights=False: a non-zero adapter from the start, so policy and reference (adapter off) differ
    return LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )


def unpaired(rows: list[dict]) -> list[dict]:
    """The rows as an unpaired loss reads them: two desirable answers and two undesirable ones."""
    return [
        {"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"], "label": bool(i % 2)}
        for i, r in enumerate(rows)
    ]


def trl_trainer(spec: LossSpec, pref: PreferenceConfig, model, tokenizer, tmp_path, ref_model, peft_config):
    """The TRL trainer the registry names for the loss (spec.trl), configured as `pref`; given peft_config it
    adds a new adapter, whose reference is the base (adapter off)."""
    import importlib

    from datasets import Dataset

    twin = spec.trl
    module, _, trainer_name = f"trl.{twin.trainer}".rpartition(".")
    module = importlib.import_module(module)
    trainer_class = getattr(module, trainer_name)
    config_class = getattr(module, trainer_name.removesuffix("Trainer") + "Config")
    args = {"output_dir": str(tmp_path / "trl"), "report_to": "none", "use_cpu": True, "beta": pref.beta}
    args |= twin.args | {theirs: getattr(pref, ours) for ours, theirs in twin.settings.items()}
    if pref.sft_weight:
        args |= twin.sft(pref.sft_weight)
    rows = preference_rows(4) if spec.paired else unpaired(preference_rows(4))
    reference = {"ref_model": ref_model, "peft_config": peft_config} if spec.reference else {}
    return trainer_class(
        model,
        args=config_class(**args),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        **reference,
    )


def completion_mask_loss(trainer, batch: dict) -> tuple[torch.Tensor, float, float]:
    """DPOTrainer and KTOTrainer: the batch as one set of rows with completion masks."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    inputs["completion_mask"] = batch["labels"].ne(IGNORE).long()
    if "kl_input_ids" in batch:  # KTO's mismatched answers and the labels
        inputs["KL_input_ids"], inputs["KL_attention_mask"] = (
            batch["kl_input_ids"],
            batch["kl_attention_mask"],
        )
        inputs["KL_completion_mask"] = batch["kl_labels"].ne(IGNORE).long()
        inputs["label"] = batch["desirable"]
    value = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    metrics = trainer._metrics["train"]
    return value, metrics["rewards/chosen"][-1], metrics["rewards/rejected"][-1]


def chosen_rejected_loss(trainer, batch: dict) -> tuple[torch.Tensor, float, float]:
    """ORPOTrainer and CPOTrainer: the chosen and the rejected rows as two halves."""
    pairs = batch["input_ids"].shape[0] // 2
    split = {}
    for side, rows in (("chosen", slice(None, pairs)), ("rejected", slice(pairs, None))):
        split[f"{side}_input_ids"] = batch["input_ids"][rows]
        split[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        split[f"{side}_labels"] = batch["labels"][rows]
    value, metrics = trainer.get_batch_loss_metrics(trainer.model, split)
    return value, metrics["rewards/chosen"], metrics["rewards/rejected"]


# How each TRL trainer's own loss code is called on our batch: (loss, mean chosen reward, mean rejected reward).
TRL_LOSS = {
    "DPOTrainer": completion_mask_loss,
    "KTOTrainer": completion_mask_loss,
    "ORPOTrainer": chosen_rejected_loss,
    "CPOTrainer": chosen_rejected_loss,
}


def gradients(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def trl_rows() -> list:
    """One row per registered loss and reference (LoRA: the adapter off; full: a frozen copy, or none), and one
    with sft_weight where the loss reads it (RPO: TRL's loss_type [sigmoid, sft], CPO-SimPO): a loss registered
    in tasks/preference/losses/ gets its rows by itself."""
    rows = []
    for name, spec in LOSSES.items():
        for adapter in (True, False) if spec.reference else (False,):
            rows.append(pytest.param(name, adapter, False, id=f"{name}-{'lora' if adapter else 'full'}"))
        if "sft_weight" in spec.reads:
            rows.append(pytest.param(name, spec.reference, True, id=f"{name}+sft"))
    return rows


def untested_losses(losses: dict[str, LossSpec]) -> list[str]:
    """Losses that name neither the TRL trainer they equal nor why they have none, or both."""
    return [name for name, spec in losses.items() if (spec.trl is None) == (spec.no_trl is None)]


def test_every_registered_loss_names_its_trl_counterpart_or_why_it_has_none():
    assert untested_losses(LOSSES) == []
    assert all(
        spec.trl is None or spec.trl.trainer.rpartition(".")[2] in TRL_LOSS for spec in LOSSES.values()
    )
    assert all(set(spec.reads) <= set(PreferenceConfig.model_fields) for spec in LOSSES.values())
    # the check itself: a loss registered with neither is caught
    bare = LossSpec("new", LOSSES["dpo"].compute, reference=True, paired=True)
    assert untested_losses({**LOSSES, "new": bare}) == ["new"]


@pytest.mark.parametrize(("loss", "adapter", "sft"), trl_rows())
def test_loss_rewards_and_gradients_equal_trls(loss, adapter, sft, tiny_model, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, TrainingArguments

    spec = LOSSES[loss]
    if spec.trl is None:
        if spec.no_trl:
            pytest.skip(f"{loss} has no TRL counterpart: {spec.no_trl}")
        pytest.fail(
            f"{loss}: register it with trl=TrlTwin(...), the TRL trainer it equals, or no_trl='why none'"
        )
    pref = PreferenceConfig(
        loss=loss,
        beta=BETA,
        gamma=0.7,
        desirable_weight=1.5,
        undesirable_weight=0.7,
        sft_weight=SFT_WEIGHT if sft else 0.0,
    )
    rows = preference_rows(4) if spec.paired else unpaired(preference_rows(4))
    items = tokenized(tmp_path, tokenizer, pref, rows)
    collator = (PreferenceCollator if spec.paired else UnpairedCollator)(tokenizer.pad_token_id)
    batch = collator(items)

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    needs_copy = spec.reference and not adapter
    reference = AutoModelForCausalLM.from_pretrained(tiny_model) if needs_copy else None
    if needs_copy:  # make the policy differ from its reference
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    theirs = trl_trainer(
        spec, pref, model, tokenizer, tmp_path, reference, lora_config() if adapter else None
    )
    model = theirs.model
    model.train()
    their_loss, their_chosen, their_rejected = TRL_LOSS[type(theirs).__name__](theirs, batch)
    their_grads = gradients(model, their_loss)

    args = TrainingArguments(output_dir=str(tmp_path / "ours"), report_to=[], use_cpu=True)
    ours = PreferenceTrainer(
        model=model, args=args, preference=pref, reference_model=reference, train_dataset=items
    )
    result, _ = ours.preference_step(model, batch)
    our_grads = gradients(model, result.loss)

    assert (
        abs(float(their_chosen)) > 1e-3
    )  # the policy differs from its reference: the rewards are not trivially 0
    assert result.loss.item() == pytest.approx(their_loss.item(), abs=1e-5)
    assert result.chosen_rewards.mean().item() == pytest.approx(float(their_chosen), abs=1e-5)
    assert result.rejected_rewards.mean().item() == pytest.approx(float(their_rejected), abs=1e-5)
    assert their_grads and our_grads.keys() == their_grads.keys()
    for name, grad in their_grads.items():
        assert torch.allclose(our_grads[name], grad, atol=1e-5, rtol=1e-4), name
    assert any(
        grad.abs().max() > 1e-4 for grad in our_grads.values()
    )  # a real, non-zero gradient was compared


def test_dpo_label_smoothing_is_conservative_dpo():
    from tunesmith.tasks.preference.losses import Pairs
    from tunesmith.tasks.preference.losses.dpo import dpo

    chosen, rejected = torch.tensor([-5.0, -7.0]), torch.tensor([-6.0, -4.0])
    ref_chosen, ref_rejected = torch.tensor([-5.5, -6.0]), torch.tensor([-5.0, -5.0])
    lengths = torch.tensor([3, 4])
    pairs = Pairs(chosen, rejected, lengths, lengths, ref_chosen, ref_rejected)
    smoothed = dpo(pairs, PreferenceConfig(beta=0.5, label_smoothing=0.2))
    logits = 0.5 * ((chosen - ref_chosen) - (rejected - ref_rejected))
    expected = (
        0.8 * -torch.nn.functional.logsigmoid(logits) + 0.2 * -torch.nn.functional.logsigmoid(-logits)
    ).mean()
    assert smoothed.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert smoothed.accuracy.item() == 0.5  # pair 1: +0.25 vs 0 -> chosen wins; pair 2: -0.5 vs +0.5 -> loses


# -- batches ----------------------------------------------------------------------------------------------


def test_pair_batch_masks_prompts_keeps_eos_and_puts_rejected_after_chosen(tmp_path, tokenizer):
    items = tokenized(tmp_path, tokenizer, PreferenceConfig(), preference_rows(3))
    batch = PreferenceCollator(tokenizer.pad_token_id)(items)
    assert batch["input_ids"].shape[0] == 6
    width = max(len(i["prompt_ids"]) + max(len(i["chosen_ids"]), len(i["rejected_ids"])) for i in items)
    assert batch["input_ids"].shape[1] == width  # dynamic padding: to the longest row, not max_length
    for row, item in enumerate(items):
        for offset, answer in ((0, item["chosen_ids"]), (3, item["rejected_ids"])):
            labels = batch["labels"][row + offset]
            supervised = labels[labels.ne(IGNORE)].tolist()
            assert supervised == answer  # the answer only: prompt and padding masked
            assert tokenizer.eos_token_id in supervised  # pad == eos here, yet the real EOS is kept
            start = len(item["prompt_ids"])
            assert batch["input_ids"][row + offset, :start].tolist() == item["prompt_ids"]


# -- validation ---------------------------------------------------------------------------------------------


def bad_pairs_file(tmp_path):
    rows = [json.dumps(r) for r in preference_rows(10)]
    rows[1] = json.dumps({"prompt": "p", "chosen": "same answer", "rejected": "same answer"})  # line 2
    rows[3] = json.dumps({"prompt": "p", "chosen": "good"})  # line 4: no rejected
    rows[5] = json.dumps({"prompt": "p", "chosen": 3, "rejected": "bad"})  # line 6: wrong type
    rows[7] = json.dumps({"prompt": "p", "chosen": "  ", "rejected": "bad"})  # line 8: empty answer
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_bad_pairs_are_named_by_file_and_line(tmp_path):
    path = bad_pairs_file(tmp_path)
    checked = check_preference_data(DataConfig(train_file=str(path)), PreferenceConfig())
    assert checked.problems == [
        f"{path}:2: 'chosen' and 'rejected' are identical; a pair must differ",
        f"{path}:4: missing field 'rejected' (fields present: chosen, prompt)",
        f"{path}:6: field 'chosen' must be a string or a list of messages, got int",
        f"{path}:8: field 'chosen' is empty",
    ]
    assert checked.train == [] and checked.report["bad_rows"] == 4


def test_skip_trains_on_the_rest_and_counts_them(tmp_path):
    path = bad_pairs_file(tmp_path)
    data = DataConfig(train_file=str(path), on_error="skip", validation_ratio=0.2)
    checked = check_preference_data(data, PreferenceConfig())
    assert checked.report["bad_rows"] == 4
    assert len(checked.train) + len(checked.validation) == 6
    assert len(checked.validation) == 1  # whole prompts held out


def test_conversational_rows_as_trl_writes_them(tmp_path, tokenizer):
    rows = [
        {
            "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat"}],
            "chosen": [{"role": "assistant", "content": "on the mat"}],
            "rejected": [{"role": "assistant", "content": "while dogs ran to the park"}],
        },
        {  # implicit prompt: the answers are whole conversations sharing their beginning
            "chosen": [
                {"role": "user", "content": "dogs ran"},
                {"role": "assistant", "content": "to the park"},
            ],
            "rejected": [
                {"role": "user", "content": "dogs ran"},
                {"role": "assistant", "content": "the rain"},
            ],
        },
        {
            "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "cat"}],
            "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "dog"}],
        },
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    checked = check_preference_data(
        DataConfig(train_file=str(path), on_error="skip", validation_ratio=0.0), PreferenceConfig()
    )
    assert checked.problems == [
        f"{path}:3: 'chosen' and 'rejected' differ before their last answer; both must continue the same prompt"
    ]
    first, second = sorted(checked.train, key=lambda pair: pair.where)
    assert first.prompt == (("system", "be brief"), ("user", "the cat sat")) and first.chosen == "on the mat"
    assert second.prompt == (("user", "dogs ran"),) and second.rejected == "the rain"
    items, _ = tokenize_preference([first], Renderer(tokenizer), 128, "train")
    text = tokenizer.decode(items[0]["prompt_ids"] + items[0]["chosen_ids"])
    assert (
        text
        == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nthe cat sat<|im_end|>\n<|im_start|>assistant\non the mat<|im_end|>\n"
    )


def test_kto_rows_and_labels(tmp_path):
    rows = [
        {"prompt": "the cat", "completion": "sat", "label": True},
        {"prompt": "the dog", "completion": "ran", "label": "false"},  # CSV-style text is accepted
        {"prompt": "the sun", "completion": "rose", "label": "maybe"},
        {"prompt": "the sun", "completion": "rose"},
    ]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    data = DataConfig(train_file=str(path), on_error="skip", validation_ratio=0.0)
    checked = check_preference_data(data, PreferenceConfig(loss="kto"))
    assert checked.problems[0] == f"{path}:3: field 'label' must be true or false, got 'maybe'"
    assert checked.problems[1].startswith(f"{path}:4: missing field 'label'")
    assert [e.desirable for e in checked.train] == [True, False]
    assert checked.report["desirable"] == 1 and checked.report["undesirable"] == 1


def test_kto_on_paired_rows_unpairs_them(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(5))
    data = DataConfig(train_file=str(path), validation_ratio=0.0)
    checked = check_preference_data(data, PreferenceConfig(loss="kto"))
    assert len(checked.train) == 10 and checked.report["desirable"] == 5


def test_over_length_pairs_are_dropped_whole_and_counted(tmp_path, tokenizer):
    rows = preference_rows(6)
    rows[2]["rejected"] = " ".join(WORDS * 4)  # only the rejected answer is long
    data = DataConfig(train_file=str(write_jsonl(tmp_path / "p.jsonl", rows)), validation_ratio=0.0)
    checked = check_preference_data(data, PreferenceConfig())
    items, report = tokenize_preference(checked.train, Renderer(tokenizer), 64, "train")
    assert len(items) == 5
    assert report["train_over_max_length"]["count"] == 1
    assert report["train_over_max_length"]["list"][0].startswith(f"{tmp_path / 'p.jsonl'}:3: ")


def test_data_check_counts_what_training_drops_over_max_length(tmp_path, tiny_model, tokenizer):
    from tunesmith import api
    from tunesmith.config import config_from_dict

    rows = preference_rows(8)
    rows[2]["rejected"] = " ".join(WORDS * 4)  # line 3: only the rejected answer is long
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    data = {"train_file": str(path), "validation_ratio": 0.0, "test_ratio": 0, "max_length": 64}
    raw = {"task": "preference", "model": {"name": str(tiny_model)}, "data": data}
    report = api.check_data(config_from_dict(raw)).report["lengths"]
    checked = check_preference_data(config_from_dict(raw).data, PreferenceConfig())
    _, trained = tokenize_preference(checked.train, Renderer(tokenizer), 64, "train")
    assert report["train"]["over_max_length"] == trained["train_over_max_length"]["count"] == 1
    assert report["train"]["longest"][0].startswith(f"{path}:3: ")  # the pair, by its longer answer
    unpaired = api.check_data(config_from_dict(raw | {"preference": {"loss": "kto"}})).report["lengths"]
    assert unpaired["train"]["examples"] == 16 and unpaired["train"]["over_max_length"] == 1


def test_unknown_fields_name_the_settings_to_change(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "good": "a", "bad": "b"}])
    with pytest.raises(TunesmithError, match="set preference.chosen_field / rejected_field"):
        check_preference_data(DataConfig(train_file=str(path)), PreferenceConfig())
    renamed = PreferenceConfig(prompt_field="question", chosen_field="good", rejected_field="bad")
    checked = check_preference_data(DataConfig(train_file=str(path), validation_ratio=0.0), renamed)
    assert checked.train[0].chosen == "a" and checked.train[0].prompt == (("user", "q"),)


def test_sft_weight_is_for_dpo_ipo_and_simpo_only():
    from tunesmith.config import config_from_dict

    def config(loss: str):
        raw = {
            "task": "preference",
            "model": {"name": "m"},
            "data": {"train_file": "pairs.jsonl"},
            "preference": {"loss": loss, "sft_weight": 0.5},
        }
        return config_from_dict(raw)

    assert all(config(loss).section("preference").sft_weight == 0.5 for loss in ("dpo", "ipo", "simpo"))
    for loss in ("orpo", "kto"):
        with pytest.raises(TunesmithError) as error:
            config(loss)
        assert "preference.sft_weight" in str(error.value)


@pytest.mark.parametrize("loss", ["dpo+sft", "simpo"])
def test_split_backward_gives_the_joint_steps_loss_and_gradient(loss, tiny_model, tokenizer, tmp_path):
    """Scored without gradients, then backpropagated chunk by chunk with dL/ds as weights: the same gradient as
    one backward through all rows, while no chunk is larger than the chosen half."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from tunesmith.tasks.preference.trainer import backward_chunks, split_backward

    pref = PreferenceConfig(
        loss=loss.removesuffix("+sft"), beta=BETA, gamma=0.7, sft_weight=0.5 if "sft" in loss else 0.0
    )
    items = tokenized(tmp_path, tokenizer, pref, preference_rows(6, seed=3))
    batch = PreferenceCollator(tokenizer.pad_token_id)(items)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), lora_config()
    )
    args = TrainingArguments(output_dir=str(tmp_path / "ours"), report_to=[], use_cpu=True)
    trainer = PreferenceTrainer(model=model, args=args, preference=pref, train_dataset=items)
    model.train()

    joint, _ = trainer.preference_step(model, batch)
    joint_grads = gradients(model, joint.loss)
    model.zero_grad()
    split_loss = split_backward(trainer, model, batch, accumulation=1)
    split_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    chunks = backward_chunks(batch)
    lengths = batch["attention_mask"].sum(-1)
    chosen_size = 6 * int(lengths[:6].max())
    assert len(chunks) > 2 and sorted(torch.cat(chunks).tolist()) == list(range(12))
    assert all(len(c) * int(lengths[c].max()) <= chosen_size for c in chunks)
    assert split_loss.item() == pytest.approx(joint.loss.item(), abs=1e-6)
    assert split_grads.keys() == joint_grads.keys() and joint_grads
    for name, grad in joint_grads.items():
        assert torch.allclose(split_grads[name], grad, atol=1e-6, rtol=1e-5), name
