"""An Ollama Modelfile and a README beside the GGUF file: the run's template as a Go template, its stops, its system prompt.

Ollama formats prompts with Go templates, not Jinja. The run's Jinja template is turned into one by rendering it on
marker messages: each role's text before and after its content, what opens a conversation that has no system
message (SmolLM2's template adds its own), and the generation prompt. The parts are kept only when putting them
back together reproduces the Jinja rendering of the run's own conversations; otherwise the Modelfile says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.templates import Messages
from tunesmith.export.chat_template import render

# The Go template is made from, and checked on, plain chats (system, user, assistant text): it has no form for
# .Tools, tool calls or tool results, and Ollama could not be run here to check one on token ids.
TOOLS_NOT_RENDERED = (
    "the run was trained on tool calls, but the Modelfile's TEMPLATE renders plain chats only (no tools, tool "
    "calls or tool results); for tools use llama.cpp with --jinja (the GGUF's own template, checked on ids)"
)

MARKS = {
    "system": "TunesmithSystemMark",
    "user": "TunesmithUserMark",
    "assistant": "TunesmithAssistantMark",
}


@dataclass
class TemplateParts:
    """A chat format as fixed texts around each role's content."""

    opening_without_system: str  # what comes first when the conversation does not start with a system message
    around: dict[str, tuple[str, str]]  # role -> (text before the content, text after it)
    generation_prompt: str

    def render(self, messages: Messages) -> str:
        """What the Go template below renders for these messages (Python, to check it against Jinja)."""
        text = "" if messages and messages[0][0] == "system" else self.opening_without_system
        for role, content in messages:
            before, after = self.around[role]
            text += before + content + after
        return text + self.generation_prompt

    def go_template(self) -> str:
        def literal(text: str) -> str:  # Go template text: only "{{" is special
            return text.replace("{{", '{{ "{{" }}')

        branches = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
            f"{literal(before)}{{{{ .Content }}}}{literal(after)}"
            for i, (role, (before, after)) in enumerate(self.around.items())
        )
        opening = (
            f'{{{{ if not (and .Messages (eq (index .Messages 0).Role "system")) }}}}'
            f"{literal(self.opening_without_system)}{{{{ end }}}}"
            if self.opening_without_system
            else ""
        )
        return f"{opening}{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{literal(self.generation_prompt)}"


def _split(text: str, role: str) -> tuple[str, str] | None:
    before, mark, after = text.partition(MARKS[role])
    return (before, after) if mark and MARKS[role] not in after else None


def template_parts(template: str, bos: str, eos: str) -> TemplateParts | None:
    """The fixed texts of a Jinja chat template, or None when it is not that simple (e.g. content is rewritten)."""

    def jinja(messages, generation):
        return render(template, messages, generation, bos, eos)

    system, user, assistant = ((role, MARKS[role]) for role in ("system", "user", "assistant"))
    try:
        with_system = jinja((system,), False)
        with_user = jinja((system, user), False)
        with_answer = jinja((system, user, assistant), False)
        prompt = jinja((system, user), True)
        user_first = jinja((user,), False)
    except Exception:  # a template that refuses a system message, say: no Go template
        return None
    if not (with_user.startswith(with_system) and with_answer.startswith(with_user)):
        return None
    if not (prompt.startswith(with_user) and user_first.endswith(with_user[len(with_system) :])):
        return None
    around = {
        "system": _split(with_system, "system"),
        "user": _split(with_user[len(with_system) :], "user"),
        "assistant": _split(with_answer[len(with_user) :], "assistant"),
    }
    if None in around.values():
        return None
    opening = user_first[: len(user_first) - len(with_user) + len(with_system)]
    return TemplateParts(opening, around, prompt[len(with_user) :])


def checked_parts(
    template: str, bos: str, eos: str, conversations: list[Messages]
) -> tuple[TemplateParts | None, dict]:
    """The parts and a record of how many of the run's conversations they render exactly as Jinja does."""
    parts = template_parts(template, bos, eos)
    if parts is None:
        return None, {"written": False, "reason": "the chat template is not fixed text around each message"}
    equal = sum(parts.render(c) == render(template, c, True, bos, eos) for c in conversations)
    record = {
        "written": equal == len(conversations),
        "conversations_checked": len(conversations),
        "equal": equal,
    }
    if (
        conversations
    ):  # a follow-up question after an answer: a format may join turns differently (classic does)
        longer = (*conversations[0], ("assistant", "An answer."), ("user", "And a follow-up question?"))
        record["multi_turn_equal"] = parts.render(longer) == render(template, longer, True, bos, eos)
    if not record["written"]:
        record["reason"] = (
            f"the Go template renders only {equal} of {len(conversations)} conversations as Jinja does"
        )
    return (parts if record["written"] else None), record


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError("text holds triple quotes")
    return f'"""{text}"""'


def modelfile(
    gguf_name: str, parts: TemplateParts | None, stops: list[str], system: str | None, tools: bool = False
) -> str:
    lines = [f"FROM ./{gguf_name}"]
    if tools:
        lines.append(f"# NOTE: {TOOLS_NOT_RENDERED}")
    if parts is not None:
        lines.append(f"TEMPLATE {_quoted(parts.go_template())}")
    else:
        lines.append("# no TEMPLATE: the run's chat template has no Go-template form (see export.json)")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stops]
    lines.append("# greedy decoding, as `tunesmith generate` answers by default; remove this line to sample")
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def readme(folder: Path, gguf_name: str, model_name: str, record: dict) -> str:
    checks = record["checks"]
    runtime = checks.get("llama_cpp", {})
    return f"""# {model_name} as GGUF ({record["quantization"]})

Exported by `tunesmith export {record["source_run"]} --format gguf --quantize {record["quantization"]}`;
the checks behind it are in `export.json`.

## Ollama
```
cd {folder}
ollama create {model_name} -f Modelfile
ollama run {model_name} "your prompt"
```
The Modelfile carries the run's prompt format (TEMPLATE), its stop tokens{" and system prompt" if record.get("system_prompt") else ""}.
{"**Tools:** " + record["ollama_template"]["tools"] + "." + chr(10) if record.get("ollama_template", {}).get("tools") else ""}
## llama.cpp
```
llama-server -m {folder / gguf_name} --jinja --temp 0
llama-cli -m {folder / gguf_name} --jinja -cnv --temp 0
```
`--jinja` makes llama.cpp format chats with the template embedded in the file (the run's own).

## What was checked
- reloaded by transformers' GGUF loader: {checks["reload"]["verdict"]}
- embedded template, rendered by Jinja and tokenized: {checks["template"]["equal"]} of {checks["template"]["prompts"]} prompts give exactly the token ids tunesmith trained with
- llama.cpp runtime: {runtime.get("verdict", runtime.get("skipped", "not run"))}
"""
