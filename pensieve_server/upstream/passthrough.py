"""Upstreams that already speak Anthropic Messages (``/v1/messages``): forward, barely touched.

The client's body goes upstream as it came, with the model name mapped and ``stream`` on; when a
context length is configured the fitted messages/system/tools and capped ``max_tokens`` replace
the originals. The upstream's events come back as they are, except that its pings are dropped
(Pensieve sends its own), ``message_start`` names the model the client asked for, and an
``error`` event becomes the ApiError the SSE layer reports.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from typing import Any

from pensieve_server.anthropic.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    NotFound,
    RequestTooLarge,
    ServerOverloaded,
)
from pensieve_server.anthropic.stream import StreamEvent
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.anthropic.validate import is_server_tool

log = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages"
COUNT_PATH = "/v1/messages/count_tokens"
# The upstream's error types as Pensieve's errors; its auth problems are Pensieve's config, not the client's.
_ERRORS_BY_TYPE: dict[str, type[ApiError]] = {
    "invalid_request_error": InvalidRequest,
    "not_found_error": NotFound,
    "request_too_large": RequestTooLarge,
    "rate_limit_error": ServerOverloaded,
    "overloaded_error": ServerOverloaded,
}


def forward_body(raw: dict[str, Any], fitted: MessagesRequest | None, actions: list[str]) -> dict[str, Any]:
    """What goes upstream: ``raw`` with ``stream`` on and, after fitting, the fitted parts."""
    body = dict(raw)
    body["stream"] = True
    if fitted is not None:
        body["max_tokens"] = fitted.max_tokens
        if actions:
            body["messages"] = fitted.messages
            body["system"] = fitted.system
            server_tools = [t for t in raw.get("tools") or [] if isinstance(t, dict) and is_server_tool(t)]
            if fitted.tools or server_tools:
                body["tools"] = [*fitted.tools, *server_tools]
    return body


def count_body(raw: dict[str, Any]) -> dict[str, Any]:
    """The count_tokens body: the same request without the fields count_tokens refuses."""
    return {k: v for k, v in raw.items() if k not in ("max_tokens", "stream", "stop_sequences", "temperature",
                                                       "top_p", "top_k", "metadata", "service_tier")}


def error_from_event(data: dict[str, Any]) -> ApiError:
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    kind = str(error.get("type") or "api_error")
    message = str(error.get("message") or json.dumps(data)[:500])
    return _ERRORS_BY_TYPE.get(kind, InternalError)(f"the upstream failed mid-answer: {message}")


def message_events(message: dict[str, Any]) -> Iterator[StreamEvent]:
    """A whole Message (an upstream that ignored ``stream``) as the events that build it."""
    start = copy.deepcopy(message)
    content = start.pop("content", []) or []
    start.update(content=[], stop_reason=None, stop_sequence=None)
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(content):
        if block.get("type") == "text":
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": {"type": "text", "text": ""}}
            yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": {"type": "text_delta", "text": block.get("text", "")}}
        elif block.get("type") == "tool_use":
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": {**block, "input": {}}}
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(block.get("input") or {})}}
        else:
            yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield "message_delta", {"type": "message_delta", "usage": message.get("usage") or {},
                            "delta": {"stop_reason": message.get("stop_reason"),
                                      "stop_sequence": message.get("stop_sequence")}}
    yield "message_stop", {"type": "message_stop"}


def _counts(usage: Any) -> dict[str, int]:
    """The token counts of an upstream ``usage`` object; anything else in it (or a non-object) is left out."""
    if not isinstance(usage, dict):
        return {}
    return {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}


class Relay:
    """The upstream's events, as the client should see them; keeps the usage for metrics."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage: dict[str, Any] = {}
        self.finished = False

    def on_event(self, event_type: str, data: dict[str, Any]) -> Iterator[StreamEvent]:
        """The event as the client should see it; one of the wrong shape ends the answer with a clean error."""
        try:
            yield from self._on_event(event_type, data)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            log.warning("upstream event %.40r of an unexpected shape: %s: %s", event_type, type(exc).__name__, exc)
            raise InternalError(f"the upstream sent a {event_type[:40]!r} event Pensieve cannot read "
                                f"({type(exc).__name__}: {str(exc)[:200]})") from None

    def _on_event(self, event_type: str, data: dict[str, Any]) -> Iterator[StreamEvent]:
        if event_type == "ping":
            return
        if event_type == "error":
            raise error_from_event(data)
        if event_type == "message" and data.get("type") == "message":
            for item in list(message_events(data)):  # whole first: a bad block fails before any event goes out
                yield from self._on_event(*item)
            return
        if event_type == "message_start" and isinstance(data.get("message"), dict):
            data = {**data, "message": {**data["message"], "model": self.model}}
            self.usage.update(_counts(data["message"].get("usage")))
        elif event_type == "message_delta":
            self.usage.update(_counts(data.get("usage")))
        elif event_type == "message_stop":
            self.finished = True
        yield event_type, data
