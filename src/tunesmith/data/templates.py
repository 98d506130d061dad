"""Prompt formats. One renderer turns a conversation into text for training and for generation/serving alike.

Conversations with tools, tool calls, tool results or reasoning (data/conversation.py) render through a chat
template that shows them: the model's own when it does (probed, data/tool_template.py), else tunesmith's tools
template, chosen by `tools=True` under template auto (or template: tools) and saved with the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunesmith.data.conversation import Message, as_message, to_openai, uses_agent_features
from tunesmith.data.tool_template import TOOLS_TEMPLATE, renders_reasoning, renders_tools
from tunesmith.errors import TunesmithError

Messages = tuple  # of (role, content) pairs or data.conversation.Message


@dataclass(frozen=True)
class LossMask:
    """Which tokens of a conversation are learned (data.loss_on, data.train_turns, data.train_reasoning, and each
    message's own `train`): by default every assistant turn, reasoning included; system, user and tool turns never."""

    loss_on: Literal["response", "all"] = "response"
    turns: Literal["all", "last"] = "all"
    reasoning: bool = True

    @classmethod
    def of(cls, cfg) -> LossMask:
        """The mask a DataConfig asks for."""
        return cls(cfg.loss_on, cfg.train_turns, cfg.train_reasoning)

    def learns(self, messages: list[Message], index: int) -> bool:
        message = messages[index]
        if message.role != "assistant" or message.train is False:
            return False
        return self.turns == "all" or index == max(i for i, m in enumerate(messages) if m.role == "assistant")


def drop_earlier_reasoning(messages: list[Message]) -> list[Message]:
    """Reasoning of assistant turns before the last user turn left out, as Qwen3 and DeepSeek-R1 render history."""
    users = [index for index, message in enumerate(messages) if message.role == "user"]
    last_user = users[-1] if users else -1
    return [
        message._replace(reasoning=None) if index < last_user and message.reasoning else message
        for index, message in enumerate(messages)
    ]


def _is_inline_jinja(template: str) -> bool:
    return "{{" in template or "{%" in template


class Renderer:
    """Render conversations with the classic `### Instruction:` format or a (possibly user-supplied) chat template."""

    def __init__(
        self, tokenizer, template: str = "auto", tools: bool = False, reasoning_history: str = "drop"
    ):
        """`tools`: the data has tools, calls or reasoning, so under template auto a template that cannot show
        them is replaced by tunesmith's tools template; `reasoning_history`: drop or keep earlier turns' reasoning."""
        self.tokenizer = tokenizer
        self.reasoning_history = reasoning_history
        # tunesmith's tools template replaced the tokenizer's (data check and train say so)
        self.tools_template = template == "tools" or (
            template == "auto" and tools and not renders_tools(tokenizer)
        )
        if self.tools_template:
            tokenizer.chat_template = TOOLS_TEMPLATE
            template = "chat"
        if template.endswith(".jinja"):
            path = Path(template)
            if not path.is_file():
                raise TunesmithError(
                    f"data.template: Jinja file {path} not found; give a path to a chat template"
                )
            tokenizer.chat_template = path.read_text(encoding="utf-8")
            template = "chat"
        elif _is_inline_jinja(template):
            tokenizer.chat_template = template
            template = "chat"
        if template == "auto":
            template = "chat" if getattr(tokenizer, "chat_template", None) else "classic"
        if template not in {"chat", "classic"}:
            raise TunesmithError(
                f"data.template: unknown template {template!r}; use auto, classic, chat, tools, a .jinja file or "
                "inline Jinja"
            )
        if template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise TunesmithError(
                "data.template: chat, but the tokenizer has no chat template; use template: classic or give a .jinja file"
            )
        if tokenizer.eos_token is None:
            raise TunesmithError(
                "the tokenizer has no EOS token, so a tuned model could never stop; pick a tokenizer with one"
            )
        self.kind = template
        self.renders_tools = template == "chat" and renders_tools(tokenizer)
        self.renders_reasoning = template == "chat" and renders_reasoning(tokenizer)

    # -- text rendering -------------------------------------------------------------------------
    def render(self, messages: Messages, add_generation_prompt: bool, tools: tuple[str, ...] = ()) -> str:
        """The conversation as text; `tools`: function definitions as JSON text (Example.tools)."""
        if self.kind == "chat":
            extra = {"tools": [json.loads(tool) for tool in tools]} if tools else {}
            return self.tokenizer.apply_chat_template(
                self.template_messages(messages, tools),
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **extra,
            )
        return self._render_classic(self.template_messages(messages, tools), add_generation_prompt)

    def template_messages(self, messages: Messages, tools: tuple[str, ...] = ()) -> list[dict]:
        """The messages as the chat template reads them (OpenAI's dicts), earlier reasoning dropped or kept, and
        reasoning inlined as <think>...</think> where the template has no field for it."""
        messages = [as_message(message) for message in messages]
        if self.reasoning_history == "drop":
            messages = drop_earlier_reasoning(messages)
        if uses_agent_features(messages, tools) and not self.renders_tools:
            raise TunesmithError(
                "data.template: this template cannot show tools, tool calls or reasoning; use data.template: auto "
                "(which picks tunesmith's tools template, docs/tools.md) or tools"
            )
        shown = [to_openai(message) for message in messages]
        for message, item in zip(messages, shown, strict=True):
            if message.reasoning and not self.renders_reasoning:
                item.pop("reasoning_content")
                item["content"] = f"<think>\n{message.reasoning}\n</think>\n\n{message.content}"
        return shown

    def _render_classic(self, messages: list[dict], add_generation_prompt: bool) -> str:
        parts, previous = [], None
        for role, content in ((message["role"], message["content"]) for message in messages):
            if role == "system":
                parts.append(f"{content}\n\n")
            elif role == "user":
                separator = "\n\n" if previous == "assistant" else ""
                parts.append(f"{separator}### Instruction:\n{content}\n\n### Response:\n")
            else:
                parts.append(f"{content}{self.tokenizer.eos_token}")
            previous = role
        return "".join(parts)

    def prompt(self, messages: Messages, tools: tuple[str, ...] = (), prefill: str = "") -> str:
        """The text the model continues from: the conversation so far, ending where the assistant speaks (and
        `prefill`, the start of the answer when it is forced, e.g. a tool call's opening)."""
        return self.render(messages, add_generation_prompt=True, tools=tools) + prefill

    def turns(self, messages: Messages, tools: tuple[str, ...] = ()) -> list[tuple[str, int | None]]:
        """Split a conversation into (text, index of the assistant message it renders, or None for the text
        between them) pieces whose concatenation is its full rendering."""
        messages = [as_message(message) for message in messages]
        if self.reasoning_history == "drop":  # once for the whole conversation, so every prefix agrees
            messages = drop_earlier_reasoning(messages)
        pieces, done = [], ""
        for index, message in enumerate(messages):
            if message.role != "assistant":
                continue
            prefix = self.prompt(messages[:index], tools)
            full = self.render(messages[: index + 1], add_generation_prompt=False, tools=tools)
            if not prefix.startswith(done) or not full.startswith(prefix):
                raise TunesmithError(
                    "data.template: the chat template does not render conversations incrementally, so prompt "
                    "and answer cannot be told apart; use template: classic or a custom .jinja template"
                )
            pieces += [(prefix[len(done) :], None), (full[len(prefix) :], index)]
            done = full
        return [(text, index) for text, index in pieces if text]

    def segments(self, messages: Messages, tools: tuple[str, ...] = ()) -> list[tuple[str, bool]]:
        """Split a conversation into (text, is_assistant) pieces whose concatenation is its full rendering."""
        return [(text, index is not None) for text, index in self.turns(messages, tools)]

    def masked_segments(
        self, messages: Messages, tools: tuple[str, ...] = (), mask: LossMask = LossMask()
    ) -> list[tuple[str, bool]]:
        """(text, learned) pieces of the full rendering, as `mask` says; an assistant turn's reasoning (up to
        its closing tag) is a piece of its own, learned only when mask.reasoning."""
        messages = [as_message(message) for message in messages]
        pieces = []
        for text, index in self.turns(messages, tools):
            if mask.loss_on == "all":
                pieces.append((text, True))
                continue
            learned = index is not None and mask.learns(messages, index)
            reasoning = messages[index].reasoning if learned else None
            if mask.reasoning or not reasoning or reasoning not in text:
                pieces.append((text, learned))
                continue
            end = text.index(reasoning) + len(reasoning)
            after = text[end:].removeprefix("\n").removeprefix("</think>").lstrip("\n")
            pieces += [(text[: len(text) - len(after)], False), (after, True)]
        return [(text, learned) for text, learned in pieces if text]

    # -- tokens -----------------------------------------------------------------------------------
    @property
    def add_special_tokens(self) -> bool:
        # Chat templates write BOS themselves; the classic format relies on the tokenizer's own.
        return self.kind == "classic"

    def encode_prompt(self, messages: Messages, tools: tuple[str, ...] = (), prefill: str = "") -> list[int]:
        """Token ids of a prompt for generation; training tokenizes its prompt pieces the same way."""
        text = self.prompt(messages, tools, prefill)
        return self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]
        return [*ids, self.tokenizer.eos_token_id]

    def encode_conversation(
        self, messages: Messages, tools: tuple[str, ...] = (), mask: LossMask = LossMask()
    ) -> tuple[list[int], list[bool]]:
        """Token ids and, per token, whether the loss learns it (an assistant answer, as `mask` says)."""
        ids: list[int] = []
        trained: list[bool] = []
        for text, is_answer in self.masked_segments(messages, tools, mask):
            piece = self.tokenizer(text, add_special_tokens=self.add_special_tokens and not ids)["input_ids"]
            ids += piece
            trained += [is_answer] * len(piece)
        return ids, trained

    def stop_token_ids(self) -> list[int]:
        """EOS plus whatever ends an assistant turn in this template (e.g. <|im_end|>, <|eot_id|>)."""
        stops = {self.tokenizer.eos_token_id}
        if self.kind == "chat":
            probe = self.segments((("user", "x"), ("assistant", "y")))
            answer_ids = self.tokenizer(probe[-1][0], add_special_tokens=False)["input_ids"]
            special = set(getattr(self.tokenizer, "all_special_ids", []))
            stops |= {token for token in answer_ids if token in special}
        return sorted(stops)
