"""Prompt formats. One renderer turns a conversation into text for training and for generation/serving alike."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import TunesmithError

Messages = tuple[tuple[str, str], ...]


def _is_inline_jinja(template: str) -> bool:
    return "{{" in template or "{%" in template


class Renderer:
    """Render conversations with the classic `### Instruction:` format or a (possibly user-supplied) chat template."""

    def __init__(self, tokenizer, template: str = "auto"):
        self.tokenizer = tokenizer
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
                f"data.template: unknown template {template!r}; use auto, classic, chat, a .jinja file or inline Jinja"
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

    # -- text rendering -------------------------------------------------------------------------
    def render(self, messages: Messages, add_generation_prompt: bool) -> str:
        if self.kind == "chat":
            return self.tokenizer.apply_chat_template(
                [{"role": role, "content": content} for role, content in messages],
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        return self._render_classic(messages, add_generation_prompt)

    def _render_classic(self, messages: Messages, add_generation_prompt: bool) -> str:
        parts, previous = [], None
        for role, content in messages:
            if role == "system":
                parts.append(f"{content}\n\n")
            elif role == "user":
                separator = "\n\n" if previous == "assistant" else ""
                parts.append(f"{separator}### Instruction:\n{content}\n\n### Response:\n")
            else:
                parts.append(f"{content}{self.tokenizer.eos_token}")
            previous = role
        return "".join(parts)

    def prompt(self, messages: Messages) -> str:
        """The text the model continues from: the conversation so far, ending where the assistant speaks."""
        return self.render(messages, add_generation_prompt=True)

    def segments(self, messages: Messages) -> list[tuple[str, bool]]:
        """Split a conversation into (text, is_assistant) pieces whose concatenation is its full rendering."""
        pieces, done = [], ""
        for index, (role, _) in enumerate(messages):
            if role != "assistant":
                continue
            prefix = self.prompt(messages[:index])
            full = self.render(messages[: index + 1], add_generation_prompt=False)
            if not prefix.startswith(done) or not full.startswith(prefix):
                raise TunesmithError(
                    "data.template: the chat template does not render conversations incrementally, so prompt "
                    "and answer cannot be told apart; use template: classic or a custom .jinja template"
                )
            pieces += [(prefix[len(done) :], False), (full[len(prefix) :], True)]
            done = full
        return [(text, trained) for text, trained in pieces if text]

    # -- tokens -----------------------------------------------------------------------------------
    @property
    def add_special_tokens(self) -> bool:
        # Chat templates write BOS themselves; the classic format relies on the tokenizer's own.
        return self.kind == "classic"

    def encode_prompt(self, messages: Messages) -> list[int]:
        """Token ids of a prompt for generation; training tokenizes its prompt pieces the same way."""
        return self.tokenizer(self.prompt(messages), add_special_tokens=self.add_special_tokens)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]
        return [*ids, self.tokenizer.eos_token_id]

    def encode_conversation(self, messages: Messages) -> tuple[list[int], list[bool]]:
        """Token ids and, per token, whether it belongs to an assistant answer."""
        ids: list[int] = []
        trained: list[bool] = []
        for text, is_answer in self.segments(messages):
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
