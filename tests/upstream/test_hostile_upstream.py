"""Text that is not valid Unicode, and data that is not JSON, in both directions of the upstream engine (issue 22).

Client → upstream: a lone surrogate is refused before anything goes upstream; NULs and noncharacters
go through unchanged. Upstream → client: bytes that are not UTF-8, escaped lone surrogates, broken
JSON and chunks of the wrong shape end the answer with a clean Anthropic error (an ``error`` event
when streaming, ``api_error`` JSON otherwise), never a traceback, and Pensieve keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.security import assert_anthropic_error, assert_message, assert_stream, parse_sse
from tests.upstream.conftest import pensieve_in_front
from tests.upstream.fakes import chunk, fake_openai, status, stream, text_chunks

HELLO = [{"role": "user", "content": "Say hello"}]
BODY: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": HELLO}


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Records with a traceback or at ERROR and above, from any logger."""
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info or record.levelno >= logging.ERROR:
                records.append(record)

    handler, root = Catch(logging.DEBUG), logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def raw_sse(*frames: bytes) -> Any:
    """A behaviour for the OpenAI fake: these bytes exactly, as an SSE body (each frame its own HTTP chunk)."""

    def run(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for frame in frames:
            handler.wfile.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")

    return run


def raw_json(data: bytes) -> Any:
    def run(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return run


def frame(data: dict[str, Any] | str) -> bytes:
    return b"data: " + (data if isinstance(data, str) else json.dumps(data)).encode() + b"\n\n"


START = frame(chunk({"role": "assistant", "content": ""}))
FINISH = frame(chunk(finish="stop")) + b"data: [DONE]\n\n"

# (behaviour, words the error must contain): each one an upstream breaking the protocol its own way.
BROKEN_OPENAI = {
    "invalid UTF-8": (raw_sse(START, b'data: {"choices":[{"index":0,"delta":{"content":"ab\xff\xfe"}}]}\n\n', FINISH),
                      "not valid UTF-8"),
    "UTF-8 split across reads": (raw_sse(START, b'data: {"choices":[{"index":0,"delta":{"content":"a\xc3',
                                         b'\xa9\xed\xa0\x80"}}]}\n\n', FINISH), "not valid UTF-8"),
    "escaped lone surrogate": (raw_sse(START, frame('{"choices":[{"index":0,"delta":{"content":"a\\ud800"}}]}'),
                                       FINISH), "not valid Unicode"),
    "broken JSON": (raw_sse(START, b'data: {"choices": [{"index": 0, "delta": {"content": "a\n\n', FINISH),
                    "not valid JSON"),
    "NaN": (raw_sse(START, b'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"x":NaN}}\n\n', FINISH),
            "NaN is not a JSON value"),
    "wrong shape": (raw_sse(START, frame('{"choices": [{"index": 0, "delta": "not an object"}]}'), FINISH),
                    "cannot read"),
    "whole answer not JSON": (raw_json(b"<html>502 Bad Gateway</html>"), "not valid JSON"),
    "whole answer a list": (raw_json(b"[1, 2]"), "not an object"),
    "whole answer with a surrogate": (raw_json(b'{"choices":[{"index":0,"message":{"content":"\\udfff"},'
                                               b'"finish_reason":"stop"}]}'), "not valid Unicode"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_OPENAI))
def test_broken_openai_upstream_gives_a_clean_error(case: str, server_log: list[logging.LogRecord]) -> None:
    behaviour, words = BROKEN_OPENAI[case]
    with fake_openai(behaviour, behaviour, stream(text_chunks("fine again"))) as fake, \
            pensieve_in_front(fake.url, upstream_model="fake-model") as server, server.client() as http:
        plain = http.post("/v1/messages", json=BODY)
        error = assert_anthropic_error(plain, 500, "api_error")["error"]["message"]
        assert words in error and "upstream" in error, error
        streamed = http.post("/v1/messages", json={**BODY, "stream": True})
        assert streamed.status_code == 200
        events = assert_stream(streamed.text)
        assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error", events[-1]
        assert words in events[-1][1]["error"]["message"]
        assert_message(http.post("/v1/messages", json=BODY).json())  # and the next answer is fine
    assert not server_log, [record.getMessage() for record in server_log]


def test_upstream_error_text_with_a_surrogate_is_reported_cleanly(server_log: list[logging.LogRecord]) -> None:
    refusal = status(400, '{"error": {"message": "bad input \\ud800 here"}}')
    with fake_openai(refusal) as fake, pensieve_in_front(fake.url, upstream_model="fake-model") as server, \
            server.client() as http:
        response = http.post("/v1/messages", json=BODY)
        message = assert_anthropic_error(response, 400, "invalid_request_error")["error"]["message"]
        assert "bad input \\ud800 here" in message  # the escape as text: valid Unicode for every client
    assert not server_log, [record.getMessage() for record in server_log]


def test_client_text_goes_upstream_intact_or_not_at_all(server_log: list[logging.LogRecord]) -> None:
    """NULs and noncharacters reach the upstream unchanged; a lone surrogate is a 400 and sends nothing."""
    odd = "a\x00b\uffff\ufdd0\U0010ffff"
    with fake_openai(stream(text_chunks("ok"))) as fake, \
            pensieve_in_front(fake.url, upstream_model="fake-model") as server, server.client() as http:
        answered = http.post("/v1/messages", json={**BODY, "system": odd, "stop_sequences": [odd],
                                                   "messages": [{"role": "user", "content": odd}]})
        assert answered.status_code == 200, answered.text
        sent = fake.chat_bodies()[-1]
        assert sent["messages"][0]["content"] == odd and sent["messages"][1]["content"] == odd
        assert sent["stop"] == [odd]
        before = len(fake.requests)
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            refused = http.post(path, content=json.dumps({**BODY, "system": "x\ud800"}).encode(),
                                headers={"content-type": "application/json"})
            assert_anthropic_error(refused, 400, "invalid_request_error")
            assert refused.json()["error"]["message"].startswith("system: The request body is not valid JSON")
        assert len(fake.requests) == before
    assert not server_log, [record.getMessage() for record in server_log]


# -- an upstream that speaks Anthropic Messages (passthrough) -------------------------------------

@contextmanager
def raw_anthropic(*answers: tuple[str, bytes]) -> Iterator[str]:
    """A loopback server answering each POST with the next ``(content type, body bytes)`` (the last repeats)."""
    queue = list(answers)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            content_type, data = queue.pop(0) if len(queue) > 1 else queue[0]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def event(kind: str, data: dict[str, Any] | bytes) -> bytes:
    raw = data if isinstance(data, bytes) else json.dumps({"type": kind, **data}).encode()
    return b"event: " + kind.encode() + b"\ndata: " + raw + b"\n\n"


MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "inner", "content": [],
           "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}
OPENING = event("message_start", {"message": MESSAGE}) + event(
    "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
CLOSING = (event("content_block_stop", {"index": 0})
           + event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                     "usage": {"output_tokens": 2}})
           + event("message_stop", {}))
GOOD_STREAM = OPENING + event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}}) \
    + CLOSING
SSE = "text/event-stream"
BROKEN_ANTHROPIC = {
    "invalid UTF-8": ((SSE, OPENING + b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                             b'"delta":{"type":"text_delta","text":"\xc3("}}\n\n' + CLOSING), "not valid UTF-8"),
    "escaped lone surrogate": ((SSE, OPENING + event("content_block_delta", b'{"type":"content_block_delta",'
                                                     b'"index":0,"delta":{"type":"text_delta","text":"\\udc00"}}')
                                + CLOSING), "not valid Unicode"),
    "broken JSON": ((SSE, OPENING + event("content_block_delta", b'{"type": "content_block_delta", "ind') + CLOSING),
                    "not valid JSON"),
    "plain-text error event": ((SSE, OPENING + b"event: error\ndata: upstream exploded\n\n"), "upstream exploded"),
    "whole message of the wrong shape": (("application/json", json.dumps({**MESSAGE, "content": 7}).encode()),
                                         "cannot read"),
    "whole answer not JSON": (("application/json", b"<html>oops</html>"), "not valid JSON"),
    # Valid JSON in the wrong shape is relayed as it came to a streaming client; a folded answer must not crash.
    "delta of the wrong shape": ((SSE, OPENING + event("content_block_delta", {"index": 0, "delta": "x"}) + CLOSING),
                                 "does not fold"),
}
PLAIN_ONLY = {"delta of the wrong shape"}


@pytest.mark.parametrize("case", sorted(BROKEN_ANTHROPIC))
def test_broken_anthropic_upstream_gives_a_clean_error(case: str, server_log: list[logging.LogRecord]) -> None:
    answer, words = BROKEN_ANTHROPIC[case]
    with raw_anthropic(answer, answer, answer, answer, (SSE, GOOD_STREAM)) as url, \
            pensieve_in_front(url, upstream_api="anthropic", upstream_model="inner") as server, \
            server.client() as http:
        for stream_on in (False,) if case in PLAIN_ONLY else (False, True):
            response = http.post("/v1/messages", json={**BODY, "stream": stream_on})
            if stream_on:
                assert response.status_code == 200
                events = parse_sse(response.text)
                assert events[-1][0] == "error" and words in events[-1][1]["error"]["message"], events[-1]
            else:
                message = assert_anthropic_error(response, 500, "api_error")["error"]["message"]
                assert words in message, message
        for _ in range(5):  # the script's broken answers used up, the next one is fine
            last = http.post("/v1/messages", json=BODY)
            if last.status_code == 200:
                break
        assert_message(last.json())
        assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200
    assert not server_log, [record.getMessage() for record in server_log]
