"""A chat row's messages, tools, calls, results and reasoning, checked: the Messages it holds or its first problem.

Every problem names the key (`messages[2].tool_calls[0].function.arguments`) and what is wrong, on one line;
validate.py adds the file:line. Arguments are checked against the function's JSON schema with `jsonschema`.
"""

from __future__ import annotations

import json

from jsonschema import exceptions as schema_errors
from jsonschema import validators

from tunesmith.data.conversation import REASONING_FIELDS, ROLES, Message, ToolCall

EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def parse_tools(value, field: str) -> tuple[tuple[str, ...], dict[str, dict], str | None]:
    """A row's tools as JSON text (one definition each, OpenAI's shape), their parameter schemas by name, or
    the first problem. A JSON string holding the list is read too (some data sets store it so)."""
    if value is None:
        return (), {}, None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            return (), {}, f"{field} is a string but not JSON: {error.msg}"
    if not isinstance(value, list):
        return (), {}, f"{field} must be a list of function definitions, got {type(value).__name__}"
    tools, schemas = [], {}
    for index, tool in enumerate(value):
        where = f"{field}[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            return (
                (),
                {},
                f'{where} must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}',
            )
        name = function["name"]
        if name in schemas:
            return (), {}, f"{where}: function {name!r} is defined twice"
        parameters = function.get("parameters") or EMPTY_PARAMETERS
        if not isinstance(parameters, dict):
            return (), {}, f"{where}.function.parameters must be a JSON schema object"
        try:
            validators.validator_for(parameters).check_schema(parameters)
        except schema_errors.SchemaError as error:
            return (), {}, f"{where}.function.parameters is not a valid JSON schema: {error.message}"
        schemas[name] = parameters
        tools.append(json.dumps({"type": "function", "function": {**function, "parameters": parameters}}))
    return tuple(tools), schemas, None


def argument_problem(arguments, schema: dict) -> tuple[dict | None, str | None]:
    """The arguments as an object, or why they are not JSON or do not satisfy the function's schema."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            return None, f"is not valid JSON ({error.msg} at character {error.pos})"
    if not isinstance(arguments, dict):
        return None, f"must be a JSON object, got {type(arguments).__name__}"
    try:
        error = schema_errors.best_match(validators.validator_for(schema)(schema).iter_errors(arguments))
    except (
        Exception
    ) as failure:  # a schema that passed check_schema can still fail to apply (an unresolvable $ref)
        return (
            None,
            f"cannot be checked: the function's schema fails with {type(failure).__name__}: {failure}",
        )
    if error is not None:
        path = "".join(f"[{part!r}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
        return None, f"does not satisfy the function's schema{' at ' + path if path else ''}: {error.message}"
    return arguments, None


def parse_calls(value, where: str, schemas: dict[str, dict], index: int) -> tuple[tuple, str | None]:
    """An assistant message's tool_calls as ToolCalls (ids given or `call_<message>_<n>`), or the first problem."""
    if not isinstance(value, list):
        return (), f"{where} must be a list of calls"
    calls = []
    for number, call in enumerate(value):
        at = f"{where}[{number}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return (), f'{at} must be {{"id": ..., "function": {{"name": ..., "arguments": ...}}}}'
        name = function["name"]
        if name not in schemas:
            known = ", ".join(sorted(schemas)) or "none: the row has no tools"
            return (), f"{at} calls {name!r}, which is not among the tools ({known})"
        arguments, problem = argument_problem(function.get("arguments", {}), schemas[name])
        if problem:
            return (), f"{at}.function.arguments {problem}"
        call_id = call.get("id") or f"call_{index}_{number}"
        calls.append(ToolCall(str(call_id), name, json.dumps(arguments, ensure_ascii=False)))
    return tuple(calls), None


def reasoning_of(message: dict, where: str) -> tuple[str | None, str | None]:
    given = [key for key in REASONING_FIELDS if message.get(key)]
    if not given:
        return None, None
    if message.get("role") != "assistant":
        return None, f"{where}.{given[0]} is only for assistant messages, this one is {message.get('role')!r}"
    reasoning = message[given[0]]
    if not isinstance(reasoning, str):
        return None, f"{where}.{given[0]} must be a string"
    return reasoning, None


def content_of(message: dict, where: str, may_be_empty: bool) -> tuple[str | None, str | None]:
    content = message.get("content")
    if content is None and may_be_empty:
        return "", None
    if not isinstance(content, str) or (not content.strip() and not may_be_empty):
        return None, f"{where}.content must be a non-empty string"
    return content, None


def parse_message(
    message, where: str, schemas: dict, index: int, empty_content: bool = False
) -> tuple[Message | None, str | None]:
    if not isinstance(message, dict):
        return None, f"{where} must be an object with 'role' and 'content'"
    role = message.get("role")
    if role not in ROLES:
        return None, f"{where}.role must be one of {sorted(ROLES)}, got {role!r}"
    reasoning, problem = reasoning_of(message, where)
    if problem:
        return None, problem
    calls: tuple = ()
    if message.get("tool_calls"):
        if role != "assistant":
            return None, f"{where}.tool_calls is only for assistant messages, this one is {role!r}"
        calls, problem = parse_calls(message["tool_calls"], f"{where}.tool_calls", schemas, index)
        if problem:
            return None, problem
    content, problem = content_of(message, where, may_be_empty=empty_content or bool(calls or reasoning))
    if problem:
        return None, problem
    train = message.get("train")
    if train is not None and not isinstance(train, bool):
        return None, f"{where}.train must be true or false, got {train!r}"
    call_id = message.get("tool_call_id")
    return Message(role, content, calls, None if call_id is None else str(call_id), reasoning, train), None


def answer_calls(messages: list[Message], field: str) -> tuple[list[Message], str | None]:
    """Each tool message tied to an earlier call: by tool_call_id, or without one to the oldest unanswered."""
    open_calls: list[str] = []
    answered = []
    for index, message in enumerate(messages):
        open_calls += [call.id for call in message.tool_calls]
        if message.role != "tool":
            answered.append(message)
            continue
        call_id = message.tool_call_id or (open_calls[0] if open_calls else None)
        if call_id not in open_calls:
            wanted = f"tool_call_id {message.tool_call_id!r}" if message.tool_call_id else "a call"
            return (
                [],
                f"{field}[{index}] is a tool result for {wanted}, but no earlier assistant call is open",
            )
        open_calls.remove(call_id)
        answered.append(message._replace(tool_call_id=call_id))
    return answered, None


def chat_messages(value, field: str, tools_value, tools_field: str, empty_content: bool = False):
    """(messages, tools, problem): a row's conversation in canonical form, or the first problem in it;
    `empty_content`: empty or null texts are accepted (a request to the server, not a training row)."""
    tools, schemas, problem = parse_tools(tools_value, tools_field)
    if problem:
        return None, (), problem
    messages = []
    for index, message in enumerate(value):
        parsed, problem = parse_message(message, f"{field}[{index}]", schemas, index, empty_content)
        if problem:
            return None, (), problem
        messages.append(parsed)
    messages, problem = answer_calls(messages, field)
    if problem:
        return None, (), problem
    return tuple(plain(message) for message in messages), tools, None


def plain(message: Message) -> Message | tuple[str, str]:
    """A message with nothing but role and content as the (role, content) pair plain chat data has always been,
    so such data keeps its examples, duplicates and cache keys."""
    return (message.role, message.content) if message == Message(message.role, message.content) else message
