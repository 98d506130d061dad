"""tunesmith's training template for tool and reasoning data, and probes of what a model's own template renders.

The template is ChatML with the Hermes / Qwen2.5 tool convention (docs/tools.md): the tools listed as JSON in the
system turn inside <tools></tools>, each call as <tool_call>{"name": ..., "arguments": {...}}</tool_call> in the
assistant turn, each result in a `tool` turn inside <tool_response></tool_response>, and reasoning as
<think>...</think> before the answer. It is a Jinja chat template set on the tokenizer, so it is saved with the run
and training, `generate`, `serve` and the GGUF export all render through the same apply_chat_template call.
"""

from __future__ import annotations

TOOLS_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
CALL_FORMAT = (
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call>"
)

TOOLS_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- " + repr(TOOLS_SYSTEM) + " }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\n' + " + repr(CALL_FORMAT) + " + '<|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.get('reasoning_content') %}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- message['content'] or '' }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- if message['content'] or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": ' + (call.function.name | tojson) + ', \"arguments\": ' }}"
    "{%- if call.function.arguments is string %}{{- call.function.arguments }}"
    "{%- else %}{{- call.function.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

PROBE_FUNCTION = "tunesmith_probe_function"
PROBE_REASONING = "tunesmith probe reasoning"
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": PROBE_FUNCTION,
        "description": "probe",
        "parameters": {"type": "object", "properties": {}},
    },
}


def _renders(tokenizer, messages: list[dict], marker: str, **kwargs) -> bool:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception:  # a template that raises on the probe cannot render it (e.g. "roles must alternate")
        return False
    return marker in text


def renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template shows the tools it is given and the calls an assistant makes."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    call = {"id": "call_0", "type": "function", "function": {"name": PROBE_FUNCTION, "arguments": {}}}
    listed = _renders(tokenizer, [{"role": "user", "content": "x"}], PROBE_FUNCTION, tools=[PROBE_TOOL])
    called = _renders(
        tokenizer,
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]}],
        PROBE_FUNCTION,
        tools=[PROBE_TOOL],
    )
    return listed and called


def renders_reasoning(tokenizer) -> bool:
    """Whether the chat template shows an assistant message's reasoning_content (Qwen3-style templates do)."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "y", "reasoning_content": PROBE_REASONING},
    ]
    return _renders(tokenizer, messages, PROBE_REASONING)
