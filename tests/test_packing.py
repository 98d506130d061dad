import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.data.collate import IGNORE, PackedCollator, PadCollator, pack
from tunesmith.data.prepare import encode
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.data.validate import Example

CONVERSATIONS = [
    (("user", "the cat sat on"), ("assistant", "a mat")),
    (("user", "dogs ran to the park and birds sang songs"), ("assistant", "about rain and sun")),
    (("user", "write headline"), ("assistant", "market shares rose")),
    (("user", "team won"), ("assistant", "the match")),
]


def token_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position loss of predicting labels[t] from position t-1, and the target labels."""
    with torch.no_grad():
        # use_cache=False as in training: with a KV cache transformers skips the packed (block-diagonal) mask
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    targets = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
    )
    return losses, targets


def test_packed_loss_per_example_equals_unpacked(tiny_model, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    renderer = Renderer(tokenizer, "chat")
    items = [encode(Example(str(i), c), renderer, LossMask()) for i, c in enumerate(CONVERSATIONS)]

    unpacked = []
    for item in items:
        losses, _ = token_losses(model, PadCollator(tokenizer.pad_token_id)([item]))
        unpacked.append(losses.sum().item())

    rows = pack(items, max_length=512)
    assert len(rows) == 1  # all four fit in one row, so they would attend to each other without the mask
    losses, targets = token_losses(model, PackedCollator(tokenizer.pad_token_id)(rows))
    positions = rows[0]["position_ids"]
    starts = [index for index, position in enumerate(positions) if position == 0] + [len(positions)]
    packed = []
    for start, end in zip(starts[:-1], starts[1:], strict=True):
        # targets at t come from labels[t+1]: example tokens start..end-1 are targets start-1..end-2
        packed.append(losses[0, start : end - 1].sum().item())
        assert targets[0, start - 1].item() == IGNORE if start > 0 else True  # no loss across the boundary
    order = sorted(range(len(items)), key=lambda i: -len(items[i]["input_ids"]))
    for slot, index in enumerate(order):
        assert abs(packed[slot] - unpacked[index]) < 1e-4, (slot, packed[slot], unpacked[index])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_row_logits_equal_each_example_run_alone(tiny_model, tokenizer, attention):
    """No token attends across examples: each example's logits in the packed row (no attention mask, position
    ids restarting) are its logits run alone, to float rounding."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention).eval()
    renderer = Renderer(tokenizer, "chat")
    items = [encode(Example(str(i), c), renderer, LossMask()) for i, c in enumerate(CONVERSATIONS)]
    rows = pack(items, max_length=512)
    assert len(rows) == 1
    batch = PackedCollator(tokenizer.pad_token_id)(rows)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        order = sorted(range(len(items)), key=lambda i: -len(items[i]["input_ids"]))
        start = 0
        for index in order:
            ids = torch.tensor([items[index]["input_ids"]])
            alone = model(input_ids=ids, use_cache=False).logits[0]
            segment = packed[start : start + ids.shape[1]]
            assert (segment - alone).abs().max().item() < 1e-5, (index, (segment - alone).abs().max().item())
            start += ids.shape[1]
    # and the check can fail: with plain positions (one sequence) the later examples see the earlier ones
    with torch.no_grad():
        joined = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    last = items[order[-1]]["input_ids"]
    alone = model(input_ids=torch.tensor([last]), use_cache=False).logits[0]
    assert (joined[start - len(last) : start] - alone).abs().max().item() > 1e-3


def test_padded_batch_rows_do_not_change_packed_losses(tiny_model, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    renderer = Renderer(tokenizer, "chat")
    items = [encode(Example(str(i), c), renderer, LossMask()) for i, c in enumerate(CONVERSATIONS)]
    rows = pack(items, max_length=40)
    assert len(rows) > 1
    collator = PackedCollator(tokenizer.pad_token_id)
    together, _ = token_losses(model, collator(rows))
    for index, row in enumerate(rows):
        alone, _ = token_losses(model, collator([row]))
        width = len(row["input_ids"]) - 1
        assert torch.allclose(together[index, :width], alone[0, :width], atol=1e-5)


TEXTS = ["the cat sat on a mat", "dogs ran to the park and birds sang songs about rain", "market shares rose"]


@pytest.mark.parametrize(
    "items_of",
    [
        pytest.param(
            lambda r: [encode(Example(str(i), c), r, LossMask("all")) for i, c in enumerate(CONVERSATIONS)],
            id="chat-loss-on-all",
        ),
        pytest.param(
            lambda r: [encode(Example(str(i), text=t), r, LossMask()) for i, t in enumerate(TEXTS)],
            id="plain-text",
        ),
    ],
)
def test_no_loss_crosses_a_boundary_when_every_token_is_trained(tiny_model, tokenizer, items_of):
    """With loss_on: all or plain text an example's first token is a target: packing alone must mask it."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    items = items_of(Renderer(tokenizer, "chat"))
    assert all(item["labels"][0] != IGNORE for item in items)  # the case the chat test cannot see
    rows = pack(items, max_length=512)
    assert len(rows) == 1
    losses, targets = token_losses(model, PackedCollator(tokenizer.pad_token_id)(rows))
    positions = rows[0]["position_ids"]
    starts = [index for index, position in enumerate(positions) if position == 0]
    assert len(starts) == len(items)
    for start in starts[1:]:
        # the first token of each later example would be predicted from the previous example's last token
        assert targets[0, start - 1].item() == IGNORE
    packed = [
        losses[0, a : b - 1].sum().item() for a, b in zip(starts, [*starts[1:], len(positions)], strict=True)
    ]
    order = sorted(range(len(items)), key=lambda i: -len(items[i]["input_ids"]))
    for slot, index in enumerate(order):
        alone, _ = token_losses(model, PadCollator(tokenizer.pad_token_id)([items[index]]))
        assert abs(packed[slot] - alone.sum().item()) < 1e-4, (slot, packed[slot], alone.sum().item())
    supervised = sum(sum(label != IGNORE for label in item["labels"][1:]) for item in items)
    assert int(targets.ne(IGNORE).sum()) == supervised  # exactly one target fewer per example than unpacked
