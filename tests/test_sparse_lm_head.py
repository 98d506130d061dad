import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, TrainingArguments

from tunesmith.data.collate import PadCollator
from tunesmith.data.prepare import encode
from tunesmith.data.templates import LossMask, Renderer
from tunesmith.data.validate import Example
from tunesmith.training.loop import CausalLMTrainer

CONVERSATIONS = [
    (("user", "the cat sat on"), ("assistant", "a mat")),
    (("user", "dogs ran to the park and birds sang songs"), ("assistant", "about rain and sun")),
    (("user", "write headline"), ("assistant", "market shares rose fell")),
]


def lora_trainer_and_batch(tmp_path, tiny_model, tokenizer):
    """A LoRA model in a CausalLMTrainer, a padded batch of CONVERSATIONS, and its supervised-token count."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # non-zero B so the adapter path carries gradient everywhere
            torch.nn.init.normal_(parameter, std=0.02)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = CausalLMTrainer(model=model, args=args)
    renderer = Renderer(tokenizer, "chat")
    batch = PadCollator(tokenizer.pad_token_id)(
        [encode(Example("x", c), renderer, LossMask()) for c in CONVERSATIONS]
    )
    num_items = batch["labels"][:, 1:].ne(-100).sum()
    return trainer, model, batch, num_items


def loss_and_grads(trainer, model, batch, sparse: bool, num_items):
    trainer.sparse_lm_head = sparse
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_sparse_lm_head_matches_plain_loss_and_gradients(tmp_path, tiny_model, tokenizer):
    trainer, model, batch, num_items = lora_trainer_and_batch(tmp_path, tiny_model, tokenizer)
    plain_loss, plain_grads = loss_and_grads(trainer, model, batch, sparse=False, num_items=num_items)
    sparse_loss, sparse_grads = loss_and_grads(trainer, model, batch, sparse=True, num_items=num_items)
    assert abs(plain_loss.item() - sparse_loss.item()) < 1e-6
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, sparse_grads[name], atol=1e-6, rtol=1e-4), name
    # without num_items (evaluation) both paths give the mean over supervised tokens
    trainer.sparse_lm_head = True
    with torch.no_grad():
        assert abs(trainer.compute_loss(model, dict(batch)).item() - plain_loss.item()) < 1e-6


def test_bf16_fast_path_matches_plain_fp32_within_bf16_tolerance(tmp_path, tiny_model, tokenizer):
    """The fast path (bf16 autocast with fp32 master weights + sparse LM head) against the plain fp32 full-head
    path: same loss and same gradient direction, within what bf16's 8-bit mantissa allows."""
    trainer, model, batch, num_items = lora_trainer_and_batch(tmp_path, tiny_model, tokenizer)
    plain_loss, plain_grads = loss_and_grads(trainer, model, batch, sparse=False, num_items=num_items)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast_loss, fast_grads = loss_and_grads(trainer, model, batch, sparse=True, num_items=num_items)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert abs(fast_loss.item() - plain_loss.item()) / plain_loss.item() < 1e-2
    for name, grad in plain_grads.items():
        fast = fast_grads[name].float()
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), fast.flatten(), dim=0)
        assert cosine > 0.99, (name, cosine.item())
        assert (fast.norm() - grad.norm()).abs() / grad.norm() < 0.05, name
