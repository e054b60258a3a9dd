"""Streaming tool-call parser: model text in, text pieces and validated tool calls out.

The model writes calls the way render.py shows them, Hermes style::

    <tool_call>
    {"name": "Bash", "arguments": {"command": "ls"}}
    </tool_call>

Tolerated: a missing ``</tool_call>`` at the end of generation (or before the next ``<tool_call>``),
```json fences inside the tags, ``arguments`` / ``parameters`` / ``input`` keys (or a JSON string of
arguments), ``{"function": {...}}`` wrapping, stray closing braces, and a bare call object as the
whole output (Llama 3.x style). Text that could be the start of ``<tool_call>`` is held back, so a
partial tag never leaks.

A call is emitted only once it is complete and valid (known tool, arguments matching the tool's
``input_schema``), as ``ToolCallStart``, one ``ToolCallDelta`` with the arguments JSON, and
``ToolCallEnd``: a started tool_use block can't be taken back, and anything malformed must degrade
to plain text instead. The parser never raises. Text after the first call is dropped (small models
tend to invent the tool's answer there); later calls are still recognised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pensieve_server.anthropic.ids import random_base62

_OPEN = "<tool_call>"
_CLOSE = "</tool_call>"
_ARGUMENT_KEYS = ("arguments", "parameters", "input")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```\s*$")
_TRAILING_JUNK = re.compile(r"^[\s}`]*$")
_BARE_OPENING = re.compile(r"\s*\{\s*(\S)")


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    partial_json: str


@dataclass(frozen=True)
class ToolCallEnd:
    input: dict


Piece = TextPiece | ToolCallStart | ToolCallDelta | ToolCallEnd


def new_tool_use_id() -> str:
    """An Anthropic-looking tool_use id: ``toolu_`` and 24 random base62 characters."""
    return "toolu_" + random_base62(24)


# -- schema checking --------------------------------------------------------------------------------

class _Invalid(ValueError):
    pass


def _is_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "null":
        return value is None
    return True  # unknown type keyword: don't guess


def conform(schema: Any, value: Any) -> Any:
    """``value`` checked against the basics of a JSON schema; raises ``_Invalid``.

    Checks type, enum, const, required, properties, items, anyOf/oneOf/allOf. Keys a closed object
    (``additionalProperties: false``) doesn't know are dropped rather than failing the whole call.
    """
    if not isinstance(schema, dict):
        return value
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            for branch in schema[key]:
                try:
                    value = conform(branch, value)
                    break
                except _Invalid:
                    continue
            else:
                raise _Invalid(f"matches no {key} branch")
    for branch in schema.get("allOf") or []:
        value = conform(branch, value)
    kinds = schema.get("type")
    if kinds is not None and not any(_is_type(value, k) for k in (kinds if isinstance(kinds, list) else [kinds])):
        raise _Invalid(f"expected {kinds}")
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        raise _Invalid("not in enum")
    if "const" in schema and value != schema["const"]:
        raise _Invalid("not the const value")
    if isinstance(value, dict):
        missing = [key for key in schema.get("required") or [] if key not in value]
        if missing:
            raise _Invalid(f"missing {missing}")
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        checked = {}
        for key, item in value.items():
            if key in properties:
                checked[key] = conform(properties[key], item)
            elif extra is False:
                continue
            else:
                checked[key] = conform(extra, item) if isinstance(extra, dict) else item
        return checked
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [conform(schema["items"], item) for item in value]
    return value


# -- call bodies -----------------------------------------------------------------------------------

def _load_object(text: str) -> Any:
    """The JSON object in ``text`` (fences and stray trailing braces allowed), or None."""
    text = _FENCE.sub("", text.strip()).strip()
    start = text.find("{")
    if start < 0 or text[:start].strip():
        return None
    try:
        value, end = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None
    return value if _TRAILING_JUNK.match(text[end:]) else None


class _Catalogue:
    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.by_name = {tool["name"]: tool for tool in tools if isinstance(tool.get("name"), str)}
        lowered: dict[str, list[str]] = {}
        for name in self.by_name:
            lowered.setdefault(name.lower(), []).append(name)
        self.by_lower = {key: names[0] for key, names in lowered.items() if len(names) == 1}

    def resolve(self, name: Any) -> dict[str, Any] | None:
        if not isinstance(name, str):
            return None
        name = name.strip()
        tool = self.by_name.get(name)
        if tool is None and name.lower() in self.by_lower:
            tool = self.by_name[self.by_lower[name.lower()]]
        return tool

    def call(self, text: str, *, bare: bool = False) -> tuple[str, dict[str, Any]] | None:
        """``(tool name, checked input)`` for a call body, or None when it isn't a valid call."""
        obj = _load_object(text)
        if not isinstance(obj, dict):
            return None
        if isinstance(obj.get("function"), dict):
            obj = obj["function"]
        key = next((k for k in _ARGUMENT_KEYS if k in obj), None)
        if bare and key is None:
            return None  # a bare object must look like a call, not like any JSON answer
        arguments = obj.get(key, {}) if key else {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                return None
        if arguments is None:
            arguments = {}
        tool = self.resolve(obj.get("name"))
        if tool is None or not isinstance(arguments, dict):
            return None
        try:
            checked = conform(tool.get("input_schema") or {}, arguments)
        except (_Invalid, RecursionError):
            return None
        return tool["name"], checked


class _JsonScanner:
    """String-aware scanning of growing JSON text: each character is looked at once."""

    def __init__(self) -> None:
        self.index, self.depth, self.in_string, self.escaped = 0, 0, False, False

    def _step(self, char: str) -> None:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
        elif char == '"':
            self.in_string = True
        elif char == "{":
            self.depth += 1
        elif char == "}" and self.depth > 0:
            self.depth -= 1

    def object_end(self, text: str) -> int | None:
        """Index just past the first top-level object in ``text``, or None while it is open."""
        while self.index < len(text):
            char = text[self.index]
            closing = char == "}" and not self.in_string and self.depth == 1
            self._step(char)
            self.index += 1
            if closing:
                return self.index
        return None

    def tag(self, text: str) -> tuple[int, str] | None:
        """The first ``<tool_call>`` or ``</tool_call>`` outside JSON strings, or None (yet)."""
        while self.index < len(text):
            char = text[self.index]
            if char == "<" and not self.in_string:
                ahead = text[self.index:self.index + len(_CLOSE)]
                for tag in (_CLOSE, _OPEN):
                    if ahead.startswith(tag):
                        return self.index, tag
                if len(ahead) < len(_CLOSE) and (_CLOSE.startswith(ahead) or _OPEN.startswith(ahead)):
                    return None  # maybe a tag: wait for more text
            self._step(char)
            self.index += 1
        return None


def _held_from(buffer: str) -> int:
    """Where the part of ``buffer`` that must wait begins: a possible tag start and whitespace before it."""
    cut = len(buffer)
    last = buffer.rfind("<", max(0, len(buffer) - len(_OPEN) + 1))
    if last >= 0 and _OPEN.startswith(buffer[last:]):
        cut = last
    while cut > 0 and buffer[cut - 1].isspace():
        cut -= 1
    return cut


# -- the parser ----------------------------------------------------------------------------------

_PASS, _START, _TEXT, _CALL, _BARE = "pass", "start", "text", "call", "bare"


class ToolCallParser:
    """Feed model text as it streams; get text pieces and tool calls. See the module docstring."""

    def __init__(self, tools: list[dict[str, Any]], *, new_id: Callable[[], str] = new_tool_use_id) -> None:
        self._catalogue = _Catalogue(tools)
        self._new_id = new_id
        self._mode = _START if self._catalogue.by_name else _PASS
        self._buffer = ""
        self._calls = 0
        self._scanner = _JsonScanner()
        self._gap = ""  # whitespace between text and a tag: dropped for a call, kept if it degrades

    @property
    def tool_calls_made(self) -> int:
        return self._calls

    def feed(self, text: str) -> list[Piece]:
        if self._mode == _PASS:
            return [TextPiece(text)] if text and not self._calls else []
        self._buffer += text
        out: list[Piece] = []
        try:
            self._advance(out, final=False)
        except Exception:  # never break a stream over a parsing bug: fall back to plain text
            self._degrade(out)
        return out

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        if self._mode == _PASS:
            return out
        try:
            self._advance(out, final=True)
        except Exception:
            self._degrade(out)
        return out

    # -- internals ---------------------------------------------------------------------------------
    def _degrade(self, out: list[Piece]) -> None:
        self._text(out, self._buffer)
        self._buffer = ""
        self._mode = _PASS

    def _text(self, out: list[Piece], text: str) -> None:
        if text and self._calls == 0:
            out.append(TextPiece(text))

    def _emit_call(self, out: list[Piece], name: str, arguments: dict[str, Any]) -> None:
        out.append(ToolCallStart(id=self._new_id(), name=name))
        out.append(ToolCallDelta(partial_json=json.dumps(arguments, ensure_ascii=False)))
        out.append(ToolCallEnd(input=arguments))
        self._calls += 1

    def _advance(self, out: list[Piece], final: bool) -> None:
        while True:
            if self._mode == _START and not self._start(final):
                break
            if self._mode == _BARE and not self._bare(out, final):
                break
            if self._mode == _TEXT and not self._scan_text(out, final):
                break
            if self._mode == _CALL and not self._scan_call(out, final):
                break

    def _start(self, final: bool) -> bool:
        """Before any output: a leading ``{`` may be a bare call object. False while undecided."""
        stripped = self._buffer.lstrip()
        if not stripped:
            if final:
                self._mode = _TEXT
                return True
            return False
        self._mode = _BARE if stripped[0] == "{" else _TEXT
        return True

    def _bare(self, out: list[Piece], final: bool) -> bool:
        first_key = _BARE_OPENING.match(self._buffer)
        if first_key and first_key.group(1) != '"':
            self._mode = _TEXT
            return True
        end = self._scanner.object_end(self._buffer)
        if end is None and not final:
            return False
        call = self._catalogue.call(self._buffer[: end or len(self._buffer)], bare=True)
        if call is None:
            self._mode = _TEXT
            return True
        self._emit_call(out, *call)
        self._buffer = self._buffer[end or len(self._buffer):]
        self._mode = _TEXT
        return True

    def _scan_text(self, out: list[Piece], final: bool) -> bool:
        index = self._buffer.find(_OPEN)
        if index >= 0:
            before = self._buffer[:index]
            self._text(out, before.rstrip())
            self._gap = before[len(before.rstrip()):]
            self._buffer = self._buffer[index + len(_OPEN):]
            self._scanner = _JsonScanner()
            self._mode = _CALL
            return True
        cut = len(self._buffer) if final else _held_from(self._buffer)
        self._text(out, self._buffer[:cut])
        self._buffer = self._buffer[cut:]
        return False

    def _scan_call(self, out: list[Piece], final: bool) -> bool:
        found = self._scanner.tag(self._buffer)
        if found is not None:
            position, tag = found
            body = self._buffer[:position]
            raw, rest = (_CLOSE, self._buffer[position + len(_CLOSE):]) if tag == _CLOSE else ("", self._buffer[position:])
        elif final:
            body, raw, rest = self._buffer, "", ""
        else:
            return False
        call = self._catalogue.call(body)
        if call is None:
            self._text(out, self._gap + _OPEN + body + raw)
        else:
            self._emit_call(out, *call)
        self._gap = ""
        self._buffer = rest
        self._mode = _TEXT
        return True
