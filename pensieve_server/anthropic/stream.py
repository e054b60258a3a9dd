"""Model output → Anthropic stream events, and the same events folded into a non-streaming Message.

:class:`MessageAssembler` turns text and tool-call pieces into ``(event_type, data)`` pairs in exactly
the order the official SDKs' accumulators expect::

    message_start
    (content_block_start  content_block_delta*  content_block_stop)*
    message_delta  message_stop

:func:`fold_events` folds such events into a Message the way the SDKs do, so a non-streaming
response is by construction what a streaming client would have assembled.

Usage follows the API's accounting: ``input_tokens`` counts only prompt tokens that were not read
from the prefix cache, ``cache_read_input_tokens`` the ones that were (their sum is the prompt).
``message_start`` already carries that split, as the API's does: the service sends it once the
engine has matched the prompt against its cache, before prefill. ``message_delta`` repeats the
final totals with the output tokens.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from pensieve_server.anthropic.errors import InternalError
from pensieve_server.anthropic.ids import random_base62
from pensieve_server.anthropic.thinking import ThinkingPiece, signature
from pensieve_server.anthropic.tools import Piece, TextPiece, ToolCallDelta, ToolCallEnd, ToolCallStart
from pensieve_server.engine.base import Completion

StreamEvent = tuple[str, dict[str, Any]]


def new_message_id() -> str:
    """An Anthropic-looking message id: ``msg_01`` and 22 random base62 characters."""
    return "msg_01" + random_base62(22)


def _usage(input_tokens: int, cache_read: int, output_tokens: int) -> dict[str, Any]:
    """The ``usage`` object of a Message, with every field the API sends."""
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


class MessageAssembler:
    """Builds the event sequence of one assistant message; every method returns the events it adds.

    ``input_tokens`` is the whole prompt and ``cache_read_input_tokens`` the part of it the engine
    reuses from its prefix cache (known before prefill); :meth:`finish` reports the split again,
    from the Completion.
    Text blocks open only at the first non-whitespace text, so no empty or blank text block is ever
    sent; a model that says nothing yields ``content: []`` as the API does. ``tools`` is accepted
    for callers' symmetry with the parser; the assembler does not need it.
    """

    def __init__(
        self,
        *,
        model: str,
        input_tokens: int,
        cache_read_input_tokens: int = 0,
        tools: list[dict[str, Any]] | None = None,
        message_id: str | None = None,
    ) -> None:
        self.message_id = message_id or new_message_id()
        self.model = model
        self.input_tokens = input_tokens
        self.cache_read_input_tokens = min(cache_read_input_tokens, input_tokens)
        self.tools = tools or []
        self.events: list[StreamEvent] = []
        self.tool_calls = 0
        self._index = -1
        self._open: str | None = None  # "text" | "tool_use" while a block is open
        self._held = ""  # whitespace waiting for real text before a text block opens
        self._tool_json = ""
        self._thinking = ""  # the open thinking block's text, for its signature
        self._started = False
        self._finished = False

    # -- events -----------------------------------------------------------------------------------
    def _emit(self, out: list[StreamEvent], event_type: str, data: dict[str, Any]) -> None:
        event = (event_type, {"type": event_type, **data})
        self.events.append(event)
        out.append(event)

    def _begin(self, out: list[StreamEvent]) -> None:
        if self._started:
            return
        self._started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(self.input_tokens - self.cache_read_input_tokens, self.cache_read_input_tokens, 1),
        }
        self._emit(out, "message_start", {"message": message})

    def _open_block(self, out: list[StreamEvent], kind: str, block: dict[str, Any]) -> None:
        self._close_block(out)
        self._index += 1
        self._open = kind
        self._emit(out, "content_block_start", {"index": self._index, "content_block": block})

    def _close_block(self, out: list[StreamEvent]) -> None:
        self._held = ""
        if self._open is None:
            return
        if self._open == "tool_use":
            self._tool_json = ""
        if self._open == "thinking":
            self._delta(out, {"type": "signature_delta", "signature": signature(self._thinking)})
            self._thinking = ""
        self._open = None
        self._emit(out, "content_block_stop", {"index": self._index})

    def _delta(self, out: list[StreamEvent], delta: dict[str, Any]) -> None:
        self._emit(out, "content_block_delta", {"index": self._index, "delta": delta})

    # -- public -----------------------------------------------------------------------------------
    def start(self) -> list[StreamEvent]:
        """``message_start``: the message with empty content and the prompt's usage."""
        out: list[StreamEvent] = []
        self._begin(out)
        return out

    def on_text(self, text: str) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if not text or self._finished:
            return out
        self._begin(out)
        if self._open != "text":
            self._held += text
            if self._held.isspace():
                return out
            text = self._held
            self._open_block(out, "text", {"type": "text", "text": ""})
        self._delta(out, {"type": "text_delta", "text": text})
        return out

    def on_thinking(self, text: str) -> list[StreamEvent]:
        """Reasoning text: a ``thinking`` block, closed with Pensieve's signature (thinking.py)."""
        out: list[StreamEvent] = []
        if not text or self._finished:
            return out
        self._begin(out)
        if self._open != "thinking":
            self._open_block(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
        self._thinking += text
        self._delta(out, {"type": "thinking_delta", "thinking": text})
        return out

    def on_tool_start(self, tool_use_id: str, name: str) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self._finished:
            return out
        self._begin(out)
        self._open_block(out, "tool_use", {"type": "tool_use", "id": tool_use_id, "name": name, "input": {}})
        self.tool_calls += 1
        return out

    def on_tool_delta(self, partial_json: str) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self._open != "tool_use" or not partial_json:
            return out
        self._tool_json += partial_json
        self._delta(out, {"type": "input_json_delta", "partial_json": partial_json})
        return out

    def on_tool_end(self, tool_input: dict[str, Any]) -> list[StreamEvent]:
        """Closes the tool_use block; sends the arguments first if no delta carried them."""
        out: list[StreamEvent] = []
        if self._open != "tool_use":
            return out
        if not self._tool_json and tool_input:
            self._tool_json = json.dumps(tool_input, ensure_ascii=False, separators=(",", ":"))
            self._delta(out, {"type": "input_json_delta", "partial_json": self._tool_json})
        self._close_block(out)
        return out

    def on_piece(self, piece: Piece) -> list[StreamEvent]:
        """Dispatch one :class:`~pensieve_server.anthropic.tools.ToolCallParser` piece."""
        if isinstance(piece, TextPiece):
            return self.on_text(piece.text)
        if isinstance(piece, ThinkingPiece):
            return self.on_thinking(piece.text)
        if isinstance(piece, ToolCallStart):
            return self.on_tool_start(piece.id, piece.name)
        if isinstance(piece, ToolCallDelta):
            return self.on_tool_delta(piece.partial_json)
        if isinstance(piece, ToolCallEnd):
            return self.on_tool_end(piece.input)
        raise TypeError(f"not a tool-call parser piece: {piece!r}")

    def finish(self, completion: Completion) -> list[StreamEvent]:
        """Close the open block, then ``message_delta`` (stop reason, final usage) and ``message_stop``."""
        out: list[StreamEvent] = []
        if self._finished:
            return out
        self._begin(out)
        self._close_block(out)
        self._finished = True
        stop_reason = "tool_use" if self.tool_calls else completion.stop_reason
        stop_sequence = completion.stop_sequence if stop_reason == "stop_sequence" else None
        cached = min(completion.cached_tokens, completion.input_tokens)
        usage = {
            "input_tokens": completion.input_tokens - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": completion.output_tokens,
        }
        self._emit(out, "message_delta",
                   {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": usage})
        self._emit(out, "message_stop", {})
        return out

    def message(self) -> dict[str, Any]:
        """The non-streaming Message: every event so far, folded. Call after :meth:`finish`."""
        return fold_events(self.events)


def fold_events(events: Iterable[StreamEvent]) -> dict[str, Any]:
    """Fold stream events into the Message an SDK accumulator would build (pings are skipped).

    Raises :class:`InternalError` when the events stop before ``message_stop``.
    """
    message: dict[str, Any] | None = None
    tool_json: dict[int, str] = {}
    complete = False
    for event_type, data in events:
        if event_type == "message_start":
            message = copy.deepcopy(data["message"])
            continue
        if message is None or event_type == "ping":
            continue
        if event_type == "content_block_start":
            message["content"].append(copy.deepcopy(data["content_block"]))
        elif event_type == "content_block_delta":
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                tool_json[data["index"]] = tool_json.get(data["index"], "") + delta["partial_json"]
        elif event_type == "content_block_stop":
            raw = tool_json.pop(data["index"], None)
            if raw is not None:
                message["content"][data["index"]]["input"] = _tool_input(raw)
        elif event_type == "message_delta":
            message["stop_reason"] = data["delta"].get("stop_reason")
            message["stop_sequence"] = data["delta"].get("stop_sequence")
            message["usage"].update({k: v for k, v in data["usage"].items() if v is not None})
        elif event_type == "message_stop":
            complete = True
    if message is None or not complete:
        raise InternalError("generation ended before the message was complete")
    return message


def _tool_input(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InternalError(f"tool call arguments are not valid JSON: {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise InternalError(f"tool call arguments are not a JSON object: {raw[:200]!r}")
    return value
