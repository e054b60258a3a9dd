"""Check a decoded Messages body once and bring it into :class:`MessagesRequest` normal form.

Errors read like the real API's (pydantic-style, naming the field): ``max_tokens: Field required``,
``messages.0.content: Input should be a valid list``. Anything Anthropic accepts but a local model
has no use for (``cache_control``, ``output_config``, ``context_management``, ``container``,
unknown top-level fields …) is accepted and ignored, so new Claude Code releases keep working.
A JSON ``null`` in an optional field counts as absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NoReturn

from pensieve_server.anthropic.errors import InvalidRequest
from pensieve_server.anthropic.types import MessagesRequest

Loc = tuple[str | int, ...]

ROLES = ("user", "assistant", "system")
TOOL_CHOICES = ("auto", "any", "tool", "none")
THINKING_TYPES = ("enabled", "disabled", "adaptive")
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# Blocks Anthropic can put in a conversation that a local model never produces: kept as they are.
PASSTHROUGH_BLOCKS = (
    "document", "search_result", "server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
    "mcp_tool_use", "mcp_tool_result", "container_upload",
)
TOOL_RESULT_BLOCKS = ("text", "image", "document", "search_result")


# -- primitives -----------------------------------------------------------------------------------

def _fail(loc: Loc, message: str) -> NoReturn:
    raise InvalidRequest(f"{'.'.join(str(part) for part in loc)}: {message}" if loc else message)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _shown_key(key: str) -> str:
    """An object key as a location part: surrogates escaped, long keys cut, so the error message is valid text."""
    shown = key.encode("utf-8", "backslashreplace").decode("utf-8")
    return shown if len(shown) <= 40 else shown[:40] + "…"


def find_lone_surrogate(value: Any) -> tuple[Loc, str, int] | None:
    """The first string (or object key) holding a lone UTF-16 surrogate: its location, the string, the index.

    Python's ``json`` turns the escape ``"\\ud800"`` into a code point no UTF-8 encoder accepts, so one
    iterative pass over the decoded body (any depth, keys too) finds them before anything encodes text.
    """
    stack: list[tuple[Any, Loc]] = [(value, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, str):
            found = None if node.isascii() else _SURROGATE.search(node)
            if found:
                return loc, node, found.start()
        elif isinstance(node, dict):
            for key in node:
                found = None if key.isascii() else _SURROGATE.search(key)
                if found:
                    return (*loc, key), key, found.start()
            stack.extend((item, (*loc, key)) for key, item in reversed(node.items()))  # reversed: document order
        elif isinstance(node, list):
            stack.extend((node[index], (*loc, index)) for index in range(len(node) - 1, -1, -1))
    return None


def check_unicode(body: Any) -> None:
    """Refuse text that is not valid Unicode as Anthropic does: 400, "not valid JSON", naming the field."""
    found = find_lone_surrogate(body)
    if found is None:
        return
    loc, text, index = found
    code = ord(text[index])
    problem = "no low surrogate in string" if code < 0xDC00 else "lone low surrogate in string"
    _fail(tuple(_shown_key(p) if isinstance(p, str) else p for p in loc),
          f"The request body is not valid JSON: {problem} (U+{code:04X} at character {index} is half of a "
          "UTF-16 surrogate pair, which is not valid Unicode)")


def _choices(values: tuple[str, ...]) -> str:
    quoted = [f"'{value}'" for value in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _required(obj: dict[str, Any], key: str, loc: Loc) -> Any:
    value = obj.get(key)
    if value is None:
        _fail((*loc, key), "Field required")
    return value


def _str(value: Any, loc: Loc, *, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        _fail(loc, "Input should be a valid string")
    if nonempty and not value:
        _fail(loc, "String should have at least 1 character")
    return value


def _bool(value: Any, loc: Loc) -> bool:
    if not isinstance(value, bool):
        _fail(loc, "Input should be a valid boolean")
    return value


def _dict(value: Any, loc: Loc) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(loc, "Input should be a valid dictionary")
    return value


def _list(value: Any, loc: Loc) -> list[Any]:
    if not isinstance(value, list):
        _fail(loc, "Input should be a valid list")
    return value


def _int(value: Any, loc: Loc, *, ge: int | None = None) -> int:
    """An integer; integral floats (``5.0``) pass as pydantic's lax mode allows, booleans never do."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, float):
        _fail(loc, "Input should be a valid integer, got a number with a fractional part")
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(loc, "Input should be a valid integer")
    if ge is not None and value < ge:
        _fail(loc, f"Input should be greater than or equal to {ge}")
    return value


def _number(value: Any, loc: Loc, *, ge: float, le: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(loc, "Input should be a valid number")
    if value != value:  # NaN cannot come from strict JSON, but Python's json accepts it
        _fail(loc, "Input should be a finite number")
    if value < ge:
        _fail(loc, f"Input should be greater than or equal to {ge:g}")
    if value > le:
        _fail(loc, f"Input should be less than or equal to {le:g}")
    return float(value)


def _literal(value: Any, loc: Loc, allowed: tuple[str, ...]) -> str:
    if value not in allowed or not isinstance(value, str):
        _fail(loc, f"Input should be {_choices(allowed)}")
    return value


def _optional(body: dict[str, Any], key: str, check: Callable[[Any, Loc], Any]) -> Any:
    value = body.get(key)
    return None if value is None else check(value, (key,))


# -- content blocks -------------------------------------------------------------------------------

def _block_type(block: Any, loc: Loc, allowed: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    if not isinstance(block, dict):
        _fail(loc, "Input should be a valid dictionary or object to extract fields from")
    kind = block.get("type")
    if not isinstance(kind, str):
        _fail(loc, "Unable to extract tag using discriminator 'type'")
    if kind not in allowed:
        _fail(loc, f"Input tag '{kind}' found using 'type' does not match any of the expected tags: "
                   f"{', '.join(repr(a) for a in allowed)}")
    return block, kind


def _text(block: dict[str, Any], loc: Loc) -> dict[str, Any]:
    _str(_required(block, "text", loc), (*loc, "text"))
    return dict(block)


def _image(block: dict[str, Any], loc: Loc) -> dict[str, Any]:
    source = _dict(_required(block, "source", loc), (*loc, "source"))
    kind = _literal(source.get("type"), (*loc, "source", "type"), ("base64", "url", "file"))
    if kind == "base64":
        _literal(source.get("media_type"), (*loc, "source", "media_type"), IMAGE_MEDIA_TYPES)
        _str(_required(source, "data", (*loc, "source")), (*loc, "source", "data"))
    elif kind == "url":
        _str(_required(source, "url", (*loc, "source")), (*loc, "source", "url"))
    else:
        _str(_required(source, "file_id", (*loc, "source")), (*loc, "source", "file_id"))
    return dict(block)


def _passthrough(block: dict[str, Any], loc: Loc) -> dict[str, Any]:
    return dict(block)


def _tool_use(block: dict[str, Any], loc: Loc) -> dict[str, Any]:
    _str(_required(block, "id", loc), (*loc, "id"), nonempty=True)
    _str(_required(block, "name", loc), (*loc, "name"), nonempty=True)
    _dict(_required(block, "input", loc), (*loc, "input"))
    return dict(block)


def _tool_result(block: dict[str, Any], loc: Loc) -> dict[str, Any]:
    """``content`` normalised to a list of blocks (a string becomes one text block, "" none)."""
    out = dict(block)
    _str(_required(block, "tool_use_id", loc), (*loc, "tool_use_id"), nonempty=True)
    content = block.get("content")
    if content is None or content == "":
        out["content"] = []
    elif isinstance(content, str):
        out["content"] = [{"type": "text", "text": content}]
    else:
        out["content"] = _blocks(content, (*loc, "content"), TOOL_RESULT_BLOCKS)
    if block.get("is_error") is not None:
        _bool(block["is_error"], (*loc, "is_error"))
    return out


def _thinking(block: dict[str, Any], loc: Loc) -> dict[str, Any]:
    _str(_required(block, "thinking", loc), (*loc, "thinking"))
    if block.get("signature") is not None:
        _str(block["signature"], (*loc, "signature"))
    return dict(block)


def _redacted_thinking(block: dict[str, Any], loc: Loc) -> dict[str, Any]:
    _str(_required(block, "data", loc), (*loc, "data"))
    return dict(block)


_BLOCK_CHECKS: dict[str, Callable[[dict[str, Any], Loc], dict[str, Any]]] = {
    "text": _text,
    "image": _image,
    "tool_use": _tool_use,
    "tool_result": _tool_result,
    "thinking": _thinking,
    "redacted_thinking": _redacted_thinking,
    **{kind: _passthrough for kind in PASSTHROUGH_BLOCKS},
}
MESSAGE_BLOCKS = tuple(_BLOCK_CHECKS)


def _blocks(value: Any, loc: Loc, allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for index, item in enumerate(_list(value, loc)):
        block, kind = _block_type(item, (*loc, index), allowed)
        out.append(_BLOCK_CHECKS[kind](block, (*loc, index)))
    return out


def _content(value: Any, loc: Loc, allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    """A string becomes one text block; a list is checked block by block."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    return _blocks(value, loc, allowed)


def _system(value: Any, loc: Loc) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}] if value else []
    return _blocks(value, loc, ("text",))


# -- messages, tools, options ---------------------------------------------------------------------

def _messages(value: Any, limit: int) -> list[dict[str, Any]]:
    items = _list(value, ("messages",))
    if not items:
        _fail(("messages",), "at least one message is required")
    if len(items) > limit:
        _fail(("messages",), f"too many messages ({len(items)}); this server accepts at most {limit}")
    out = []
    for index, item in enumerate(items):
        loc: Loc = ("messages", index)
        message = _dict(item, loc)
        role = _literal(_required(message, "role", loc), (*loc, "role"), ROLES)
        content = _required(message, "content", loc)
        allowed = ("text",) if role == "system" else MESSAGE_BLOCKS
        out.append({"role": role, "content": _content(content, (*loc, "content"), allowed)})
    check_tool_results(out)
    return out


def check_tool_results(messages: list[dict[str, Any]]) -> None:
    """Every ``tool_result`` answers a ``tool_use`` of the assistant turn just before it (as Anthropic
    requires, with its wording); user turns in between merge, as the API merges them."""
    offered: set[str] = set()
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            offered = {b.get("id", "") for b in message["content"] if b.get("type") == "tool_use"}
            continue
        if message["role"] != "user":
            continue
        first, orphans = -1, []
        for position, block in enumerate(message["content"]):
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in offered:
                first = position if first < 0 else first
                orphans.append(str(block.get("tool_use_id")))
        if orphans:
            _fail(("messages", index, "content", first),
                  f"unexpected `tool_use_id` found in `tool_result` blocks: {', '.join(orphans)}. Each "
                  "`tool_result` block must have a corresponding `tool_use` block in the previous message.")


def is_server_tool(tool: dict[str, Any]) -> bool:
    """True for Anthropic-defined tools (``{"type": "web_search_20250305", "name": ...}``).

    The normal form keeps only their ``type`` and ``name``; they have no ``input_schema``, so a
    local model cannot call them, and rendering should leave them out.
    """
    return tool.get("type") not in (None, "custom")


def _tools(value: Any, limit: int) -> list[dict[str, Any]]:
    items = _list(value, ("tools",))
    if len(items) > limit:
        _fail(("tools",), f"too many tools ({len(items)}); this server accepts at most {limit}")
    out, names = [], set()
    for index, item in enumerate(items):
        loc: Loc = ("tools", index)
        tool = _dict(item, loc)
        name = _str(_required(tool, "name", loc), (*loc, "name"), nonempty=True)
        kind = tool.get("type")
        if kind is not None and kind != "custom":
            out.append({"type": _str(kind, (*loc, "type")), "name": name})
        else:
            normal: dict[str, Any] = {"name": name}
            if tool.get("description") is not None:
                normal["description"] = _str(tool["description"], (*loc, "description"))
            normal["input_schema"] = _dict(_required(tool, "input_schema", loc), (*loc, "input_schema"))
            out.append(normal)
        if name in names:
            _fail(("tools",), "Tool names must be unique.")
        names.add(name)
    return out


def _tool_choice(value: Any, loc: Loc) -> dict[str, Any]:
    choice = _dict(value, loc)
    kind = _literal(_required(choice, "type", loc), (*loc, "type"), TOOL_CHOICES)
    out: dict[str, Any] = {"type": kind}
    if kind == "tool":
        out["name"] = _str(_required(choice, "name", loc), (*loc, "name"), nonempty=True)
    if choice.get("disable_parallel_tool_use") is not None:
        out["disable_parallel_tool_use"] = _bool(choice["disable_parallel_tool_use"],
                                                 (*loc, "disable_parallel_tool_use"))
    return out


def _thinking_config(value: Any, loc: Loc) -> dict[str, Any]:
    config = _dict(value, loc)
    kind = _literal(_required(config, "type", loc), (*loc, "type"), THINKING_TYPES)
    out = dict(config)
    if kind == "enabled":
        out["budget_tokens"] = _int(_required(config, "budget_tokens", loc), (*loc, "budget_tokens"), ge=1)
    return out


def _stop_sequences(value: Any, loc: Loc) -> list[str]:
    return [_str(item, (*loc, index)) for index, item in enumerate(_list(value, loc))]


def _str_or_dict(value: Any, loc: Loc) -> Any:
    if not isinstance(value, (str, dict)):
        _fail(loc, "Input should be a valid string or dictionary")
    return value


# Accepted for compatibility and otherwise ignored; only their JSON type is checked.
_IGNORED: dict[str, Callable[[Any, Loc], Any]] = {
    "output_config": _dict,
    "context_management": _dict,
    "service_tier": _str,
    "container": _str_or_dict,
    "mcp_servers": _list,
}


def _effort(body: dict[str, Any]) -> str | None:
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    return _str(effort, ("output_config", "effort")) if effort is not None else None


def _output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """``output_config.format`` (or the older top-level ``output_format``) when it is a JSON schema."""
    config = body.get("output_config") or {}
    found = config.get("format") if isinstance(config, dict) else None
    if found is None:
        found = body.get("output_format")
    if found is None:
        return None
    loc: Loc = ("output_config", "format") if body.get("output_format") is None else ("output_format",)
    found = _dict(found, loc)
    _literal(_required(found, "type", loc), (*loc, "type"), ("json_schema",))
    _dict(_required(found, "schema", loc), (*loc, "schema"))
    return {"type": "json_schema", "schema": found["schema"]}


# -- entry points ---------------------------------------------------------------------------------

def _parse(body: Any, *, max_tokens_required: bool, max_messages: int, max_tools: int) -> MessagesRequest:
    check_unicode(body)  # first, as the real API refuses it while decoding: nothing later sees a lone surrogate
    if not isinstance(body, dict):
        raise InvalidRequest("request body: Input should be a valid dictionary (a JSON object)")
    model = _str(_required(body, "model", ()), ("model",), nonempty=True)
    if max_tokens_required or body.get("max_tokens") is not None:
        max_tokens = _int(_required(body, "max_tokens", ()), ("max_tokens",), ge=1)
    else:
        max_tokens = 1
    messages = _messages(_required(body, "messages", ()), max_messages)
    for key, check in _IGNORED.items():
        _optional(body, key, check)
    metadata = _optional(body, "metadata", _dict)
    if metadata is not None and metadata.get("user_id") is not None:
        _str(metadata["user_id"], ("metadata", "user_id"))
    tools = _optional(body, "tools", lambda v, _: _tools(v, max_tools))
    return MessagesRequest(
        model=model,
        max_tokens=max_tokens,
        messages=messages,
        system=_optional(body, "system", _system) or [],
        tools=tools or [],
        tool_choice=_optional(body, "tool_choice", _tool_choice),
        stop_sequences=_optional(body, "stop_sequences", _stop_sequences) or [],
        temperature=_optional(body, "temperature", lambda v, loc: _number(v, loc, ge=0.0, le=1.0)),
        top_p=_optional(body, "top_p", lambda v, loc: _number(v, loc, ge=0.0, le=1.0)),
        top_k=_optional(body, "top_k", lambda v, loc: _int(v, loc, ge=0)),
        stream=bool(_optional(body, "stream", _bool)),
        thinking=_optional(body, "thinking", _thinking_config),
        metadata=metadata,
        output_format=_output_format(body),
        effort=_effort(body),
    )


def parse_messages_request(body: Any, *, max_messages: int = 10000, max_tools: int = 1000) -> MessagesRequest:
    """The ``/v1/messages`` body in normal form; raises :class:`InvalidRequest` naming the bad field."""
    return _parse(body, max_tokens_required=True, max_messages=max_messages, max_tools=max_tools)


def parse_count_tokens_request(body: Any, *, max_messages: int = 10000, max_tools: int = 1000) -> MessagesRequest:
    """The ``/v1/messages/count_tokens`` body: the same rules, but ``max_tokens`` may be absent (then 1)."""
    return _parse(body, max_tokens_required=False, max_messages=max_messages, max_tools=max_tools)
