"""The one place Server-Sent Events frames are built, so every stream is byte-identical in shape.

A frame is ``event: <type>\\ndata: <compact JSON>\\n\\n``, exactly as the Anthropic API sends it.
JSON is compact and UTF-8 (not ``\\uXXXX``-escaped); it never holds a raw newline, so one
``data:`` line always suffices.
"""

from __future__ import annotations

import json
from typing import Any


def encode_data(data: dict[str, Any]) -> str:
    """Compact JSON as the API writes it: no spaces, non-ASCII kept as UTF-8."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def encode_event(event_type: str, data: dict[str, Any]) -> bytes:
    """One SSE frame: ``event: X\\ndata: {...}\\n\\n``."""
    if "\n" in event_type or "\r" in event_type:
        raise ValueError(f"event type must be one line: {event_type!r}")
    # A lone surrogate can only sit inside a JSON string, where backslashreplace writes its valid escape.
    return f"event: {event_type}\ndata: {encode_data(data)}\n\n".encode("utf-8", "backslashreplace")


def ping_event() -> bytes:
    """A keepalive the SDKs and Claude Code ignore; it keeps idle connections open during long prefill."""
    return encode_event("ping", {"type": "ping"})


def error_data(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_event(error_type: str, message: str) -> bytes:
    """A mid-stream failure; the SDKs raise it as an APIError of ``error_type``."""
    return encode_event("error", error_data(error_type, message))
