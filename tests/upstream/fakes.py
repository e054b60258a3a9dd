"""A tiny scripted OpenAI-compatible server on a loopback port, for what a real one can't do on cue:
exact tool calls, errors, silence, and dying mid-stream. Every request is recorded."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = Callable[["_Handler"], None]


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk``."""
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake-model",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **extra}]}


def text_chunks(*texts: str, finish: str = "stop") -> list[dict[str, Any]]:
    return [chunk({"role": "assistant", "content": ""}), *(chunk({"content": t}) for t in texts), chunk(finish=finish)]


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": cached}}}


def stream(chunks: list[dict[str, Any]], *, done: bool = True, drop_after: int | None = None,
           delay: float = 0.0, stall_after: int | None = None, stall: float = 0.0) -> Behaviour:
    """Stream ``chunks`` as SSE. ``drop_after``: reset the connection after that many chunks.
    ``stall_after``/``stall``: go silent for ``stall`` seconds after that many chunks."""

    def run(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for index, item in enumerate(chunks):
            if drop_after is not None and index == drop_after:
                handler.reset()
                return
            if stall_after is not None and index == stall_after:
                time.sleep(stall)
            handler.write_chunk(f"data: {json.dumps(item)}\n\n")
            time.sleep(delay)
        if drop_after is not None:
            handler.reset()
            return
        if done:
            handler.write_chunk("data: [DONE]\n\n")
        handler.write_chunk("")

    return run


def status(code: int, body: dict[str, Any] | str) -> Behaviour:
    def run(handler: _Handler) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return run


def sleep(seconds: float) -> Behaviour:
    def run(handler: _Handler) -> None:
        time.sleep(seconds)
        status(200, {"choices": []})(handler)

    return run


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeOpenAI:
    """``script`` answers POSTs in order (the last one repeats); ``models`` answers GET /v1/models."""

    script: list[Behaviour] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["fake-model"])
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

    def next_behaviour(self) -> Behaviour:
        if not self.script:
            return stream(text_chunks("ok"))
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.path.endswith("/chat/completions")]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _record(self, body: Any) -> None:
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.fake.requests.append(Recorded(self.command, self.path, headers, body))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._record(None)
        if self.path.rstrip("/") == "/v1/models":
            status(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.fake.models]})(self)
        else:
            status(404, {"error": {"message": f"no route {self.path}"}})(self)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self._record(body)
        if self.path != "/v1/chat/completions":
            status(404, {"error": {"message": f"no route {self.path}"}})(self)
            return
        self.fake.next_behaviour()(self)

    def write_chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def reset(self) -> None:
        """Drop the connection the rude way (RST), as a crashed server's kernel would."""
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection the script reset on purpose is not worth a traceback."""


@contextmanager
def fake_openai(*script: Behaviour, models: list[str] | None = None) -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(list(script), models or ["fake-model"])
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
