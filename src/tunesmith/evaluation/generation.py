"""Batched greedy generation from prompts rendered by the same Renderer that formatted training data."""

from __future__ import annotations

import threading

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tunesmith.data.collate import pad_token_id
from tunesmith.data.templates import Messages, Renderer


@torch.no_grad()
def generate(
    model,
    renderer: Renderer,
    conversations: list[Messages],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 0.0,
    tools: list[tuple[str, ...]] | None = None,
    prefill: str = "",
) -> list[str]:
    """Complete each conversation (ending with a user turn) and return the decoded answers; `tools`: each
    conversation's function definitions, `prefill`: a forced start of every answer (returned with it)."""
    return [
        text
        for text, _ in generate_answers(
            model, renderer, conversations, max_new_tokens, batch_size, temperature, tools, prefill
        )
    ]


@torch.no_grad()
def generate_answers(
    model,
    renderer: Renderer,
    conversations: list[Messages],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 0.0,
    tools: list[tuple[str, ...]] | None = None,
    prefill: str = "",
) -> list[tuple[str, bool]]:
    """Each conversation's decoded answer, and whether it ended with a stop token inside max_new_tokens."""
    tokenizer = renderer.tokenizer
    pad_id = pad_token_id(tokenizer)
    stop_ids = renderer.stop_token_ids()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(conversations), batch_size):
        batch = range(start, min(start + batch_size, len(conversations)))
        if tools is None and not prefill:  # seq2seq's renderer takes a conversation alone
            prompts = [renderer.encode_prompt(conversations[i]) for i in batch]
        else:
            prompts = [
                renderer.encode_prompt(conversations[i], tools[i] if tools else (), prefill) for i in batch
            ]
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
            text = answer_text(row, stop_ids, tokenizer)
            outputs.append((prefill + text if prefill else text, any(t in stop_ids for t in row)))
    model.train(was_training)
    return outputs


def answer_text(tokens: list[int], stop_ids, tokenizer) -> str:
    """Generated tokens up to the first stop token, decoded without special tokens."""
    answer = []
    for token in tokens:
        if token in stop_ids:
            break
        answer.append(token)
    return tokenizer.decode(answer, skip_special_tokens=True).strip()


class Cancellation(StoppingCriteria):
    """Stops generate() between two steps once cancel() is called (a client hung up); counts the steps run."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.new_tokens = 0

    def cancel(self) -> None:
        self.event.set()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.new_tokens += 1  # generate() asks once per generated token
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


def stream(
    model,
    renderer: Renderer,
    conversation: Messages,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    cancellation: Cancellation | None = None,
    tools: tuple[str, ...] = (),
    prefill: str = "",
):
    """Yield the answer to one conversation piece by piece; joined, the pieces equal generate()'s answer.

    With a `cancellation`, cancel() stops the generation after the current token and ends the pieces; `tools`
    (function definitions as JSON text) are rendered into the prompt, `prefill` ends it (not yielded)."""
    from transformers import TextIteratorStreamer

    cancellation = cancellation or Cancellation()
    tokenizer = renderer.tokenizer
    # seq2seq's renderer takes a conversation alone; only a chat Renderer is handed tools or a prefill
    prompt = (
        renderer.encode_prompt(conversation, tools, prefill)
        if tools or prefill
        else renderer.encode_prompt(conversation)
    )
    device = next(model.parameters()).device
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    pad_id = pad_token_id(tokenizer)
    arguments = {
        "input_ids": torch.tensor([prompt], device=device),
        "attention_mask": torch.ones(1, len(prompt), dtype=torch.long, device=device),
        "max_new_tokens": max_new_tokens,
        "eos_token_id": renderer.stop_token_ids(),
        "pad_token_id": pad_id,
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList([cancellation]),
        **sampling,
    }
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with torch.no_grad():
                model.generate(**arguments)
        except BaseException as error:  # re-raised below, on the consumer's thread
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    # generate() strips the whole answer: drop leading whitespace, and hold trailing whitespace back until
    # more text follows it, so the joined pieces equal generate()'s answer.
    started, pending, finished = False, "", False
    try:
        for piece in streamer:
            text = pending + (piece if started else piece.lstrip())
            started = started or bool(text)
            body = text.rstrip()
            pending = text[len(body) :]
            if body and not cancellation.cancelled:
                yield body
        finished = True
    finally:
        if not finished:  # the consumer stopped early (close()): stop generating too
            cancellation.cancel()
        worker.join()
    if failure:
        raise failure[0]
