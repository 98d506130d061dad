"""Batched greedy generation from prompts rendered by the same Renderer that formatted training data."""

from __future__ import annotations

import torch

from tunesmith.data.templates import Messages, Renderer


@torch.no_grad()
def generate(
    model,
    renderer: Renderer,
    conversations: list[Messages],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 0.0,
) -> list[str]:
    """Complete each conversation (ending with a user turn) and return the decoded answers."""
    tokenizer = renderer.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = renderer.stop_token_ids()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(conversations), batch_size):
        prompts = [renderer.encode_prompt(c) for c in conversations[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        # Left padding keeps every prompt's last token next to its first generated token.
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            use_cache=True,
            **sampling,
        )
        for row in generated[:, width:].tolist():
            answer = []
            for token in row:
                if token in stop_ids:
                    break
                answer.append(token)
            outputs.append(tokenizer.decode(answer, skip_special_tokens=True).strip())
    model.train(was_training)
    return outputs
