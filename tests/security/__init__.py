"""Security and reliability tests: fuzzing, limits, Host/Origin/auth, bind policy, secrets, soak.

The shared judges of an answer live here, so every test in this package holds the server to the
same contract: a 2xx is a complete Message (or SSE stream of one), anything else is an
Anthropic-shaped error with the status that matches its type, and nothing is ever a 5xx.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx

# The status each Anthropic error type travels with (405 and any other 4xx map to invalid_request_error).
ERROR_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# What bad input may earn; a 5xx for anything a client can send is a server bug.
CLIENT_ERROR_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 422, 529})
STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use"})


def env_int(name: str, default: int) -> int:
    """A size knob from the environment, so CI stays quick and a soak/fuzz run can be scaled up."""
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def assert_anthropic_error(response: httpx.Response, status: int | None = None,
                           error_type: str | None = None) -> dict[str, Any]:
    """The body is ``{"type":"error","error":{"type":...,"message":...}}`` and its type fits the status."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert body["type"] == "error", body
    assert set(body) == {"type", "error"}, body
    error = body["error"]
    assert isinstance(error.get("message"), str) and error["message"], body
    expected = error_type or ERROR_TYPE_BY_STATUS.get(response.status_code)
    assert error.get("type") == expected, (response.status_code, body)
    assert response.headers.get("request-id", "").startswith("req_"), response.headers
    return body


def assert_message(message: dict[str, Any]) -> None:
    """A complete assistant Message as the SDKs parse it."""
    assert message["type"] == "message", message
    assert message["role"] == "assistant"
    assert isinstance(message["id"], str) and message["id"].startswith("msg_")
    assert isinstance(message["model"], str)
    assert message["stop_reason"] in STOP_REASONS, message
    assert message["stop_sequence"] is None or isinstance(message["stop_sequence"], str)
    assert isinstance(message["content"], list)
    for block in message["content"]:
        if block["type"] == "text":
            assert isinstance(block["text"], str)
        else:
            assert block["type"] == "tool_use", block
            assert isinstance(block["id"], str) and isinstance(block["name"], str)
            assert isinstance(block["input"], dict)
    usage = message["usage"]
    for key in ("input_tokens", "output_tokens"):
        assert isinstance(usage[key], int) and usage[key] >= 0, usage


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``event:``/``data:`` frames of an SSE body, each data decoded; a malformed frame fails the test."""
    events: list[tuple[str, dict[str, Any]]] = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        lines = frame.split("\n")
        assert len(lines) == 2, frame
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), frame
        name, data = lines[0][len("event: "):], json.loads(lines[1][len("data: "):])
        assert data["type"] == name, frame
        events.append((name, data))
    return events


def assert_stream(text: str) -> list[tuple[str, dict[str, Any]]]:
    """A complete stream (message_start … message_stop) or one that ends in a well-formed ``error`` event."""
    from pensieve_server.anthropic.stream import fold_events

    events = parse_sse(text)
    assert events, "empty stream"
    if events[-1][0] == "error":
        assert events[-1][1]["error"]["type"] in ERROR_TYPE_BY_STATUS.values(), events[-1]
        assert events[-1][1]["error"]["message"]
        return events
    started = [event for event in events if event[0] != "ping"]  # a queued request gets pings first
    assert started and started[0][0] == "message_start", events[:3]
    assert events[-1][0] == "message_stop", events[-1]
    assert_message(fold_events(events))
    return events


def assert_valid_answer(response: httpx.Response, method: str = "POST") -> None:
    """Any answer at all: a well-formed 2xx for its route, or a well-formed client error; never a 5xx."""
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    if 200 <= status < 300:
        content_type = response.headers.get("content-type", "")
        if method in ("HEAD", "OPTIONS") or not response.content:
            return
        if content_type.startswith("text/event-stream"):
            assert_stream(response.text)
        elif content_type.startswith("application/json"):
            body = response.json()
            if isinstance(body, dict) and body.get("type") == "message":
                assert_message(body)
        return
    assert status in CLIENT_ERROR_STATUSES, (status, response.text[:500])
    if method != "HEAD":
        assert_anthropic_error(response)


def raw_http(base_url: str, head: str, body: bytes = b"", timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as written (no client-side path normalisation) and read one response.

    ``head`` is the request line and headers without the final blank line; ``Connection: close``
    is added so the body ends with the connection.
    """
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.rstrip("\r\n").encode("latin-1") + b"\r\nConnection: close\r\n\r\n" + body)
        chunks: list[bytes] = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # a server refusing mid-upload may reset after answering
            if not chunks:
                raise
    raw = b"".join(chunks)
    header_blob, _, payload = raw.partition(b"\r\n\r\n")
    lines = header_blob.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, payload


def run_serve_command(monkeypatch: Any, argv: list[str]) -> tuple[int, dict[str, Any]]:
    """``pensieve serve ARGV`` through the real CLI, with a scripted model and no socket or event loop.

    Returns the exit status and what reached the server: ``settings`` and ``app`` (None when the
    command stopped before building the server).
    """
    from pensieve_cli.main import main
    from pensieve_server import runner
    from pensieve_server.engine.pool import ModelPool
    from pensieve_server.engine.scripted import ScriptedBackend

    captured: dict[str, Any] = {"settings": None, "app": None}

    class _Server:
        def close(self) -> None:
            captured["closed"] = True

    def build_server(app: Any, settings: Any, port: int | None = None) -> _Server:
        captured.update(app=app, settings=settings)
        return _Server()

    def serve_forever(server: Any, on_stop: Any = None) -> None:
        if on_stop is not None:
            on_stop()

    monkeypatch.setattr(runner, "build_server", build_server)
    monkeypatch.setattr(runner, "serve_forever", serve_forever)
    monkeypatch.setattr(ModelPool, "get", lambda self, name: self.add(name, ScriptedBackend(), engine="scripted"))
    status = main(["serve", *argv])
    return status, captured
