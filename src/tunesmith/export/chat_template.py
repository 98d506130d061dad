"""The run's prompt format as a Jinja chat template, rendered the way llama.cpp and its kin render one."""

from __future__ import annotations

import json

from tunesmith.data.templates import Messages, Renderer
from tunesmith.errors import TunesmithError


def _literal(text: str) -> str:
    """A Jinja string literal (JSON's escaping is valid Jinja)."""
    return json.dumps(text)


def classic_template(eos_token: str) -> str:
    """The `### Instruction:` format of data/templates.py as Jinja; EOS is written as text, not a variable."""
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
        "{%- elif message['role'] == 'user' -%}"
        "{%- if loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'assistant' -%}{{ '\\n\\n' }}{%- endif -%}"
        "{{ '### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
        f"{{%- else -%}}{{{{ message['content'] + {_literal(eos_token)} }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def run_template(renderer: Renderer) -> str:
    """The template a runtime needs to format prompts exactly as the run trained on them."""
    if renderer.kind == "classic":
        return classic_template(renderer.tokenizer.eos_token)
    template = renderer.tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one is the run's
        template = template.get("default")
    if not isinstance(template, str) or not template:
        raise TunesmithError("export --format gguf: the run's tokenizer has no usable chat template")
    return template


def render(
    template: str,
    messages: Messages | list[dict],
    add_generation_prompt: bool,
    bos: str,
    eos: str,
    tools=None,
) -> str:
    """Render as llama-cpp-python's Jinja2ChatFormatter does (and transformers): sandboxed, trim/lstrip blocks;
    `messages` as (role, content) pairs or as the template reads them (Renderer.template_messages), `tools` as
    function definitions."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TunesmithError(f"the chat template refused a conversation: {message}")

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    environment.filters["tojson"] = lambda value, **options: json.dumps(value, ensure_ascii=False, **options)
    return environment.from_string(template).render(
        messages=[m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in messages],
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
        raise_exception=raise_exception,
    )
