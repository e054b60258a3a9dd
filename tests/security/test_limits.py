"""Bounded inputs: body size, message and tool counts, header size, slow clients and a full queue.

The limits come from settings (``max_body_bytes``, ``max_messages``, ``max_tools``, ``queue_size``)
and from the Waitress configuration in :func:`pensieve_server.runner.build_server`. Slow-client
tests shorten Waitress's idle timeout through a wrapper around ``create_server`` so they finish in
seconds; the real values are checked separately.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from pensieve_server import runner
from pensieve_server.app import create_app
from pensieve_server.engine.pool import ModelPool
from pensieve_server.engine.scripted import ScriptedBackend
from pensieve_server.models.store import ModelStore
from pensieve_server.settings import load_settings
from tests.security import assert_anthropic_error, assert_message, raw_http
from tests.serverutil import RunningServer, running_server

GOOD: dict[str, Any] = {"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
TEST_CHANNEL_TIMEOUT = 2  # seconds of silence before Waitress drops a connection, in these tests only


def _post(server: RunningServer, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    with server.client(timeout=30) as http:
        return http.post(path, json=body, **kwargs)


# -- body size ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_body_over_max_body_bytes_is_anthropic_413(path: str) -> None:
    with running_server({"scripted": ScriptedBackend()}, max_body_bytes=4096) as server:
        big = {**GOOD, "messages": [{"role": "user", "content": "x" * 8192}]}
        assert_anthropic_error(_post(server, path, big), 413, "request_too_large")
        just_under = {**GOOD, "messages": [{"role": "user", "content": "x" * 3000}]}
        assert _post(server, path, just_under).status_code == 200


def test_chunked_body_over_limit_is_anthropic_413() -> None:
    """No Content-Length to check up front: the limit still holds while the body is read."""

    def chunks(size: int) -> Iterator[bytes]:
        yield b'{"model":"scripted","max_tokens":5,"messages":[{"role":"user","content":"'
        for _ in range(size // 1024):
            yield b"x" * 1024
        yield b'"}]}'

    with running_server({"scripted": ScriptedBackend()}, max_body_bytes=4096) as server, \
            server.client(timeout=30) as http:
        headers = {"content-type": "application/json"}
        response = http.post("/v1/messages", content=chunks(16 * 1024), headers=headers)
        assert_anthropic_error(response, 413, "request_too_large")
        assert http.post("/v1/messages", content=chunks(1024), headers=headers).status_code == 200


def test_body_far_over_limit_is_refused_by_waitress_backstop() -> None:
    """Past max_body_bytes + 1 MiB Waitress refuses before Flask runs (a plain-text 413), and lives on."""
    with running_server({"scripted": ScriptedBackend()}, max_body_bytes=4096) as server:
        with server.client(timeout=30) as http:
            response = http.post("/v1/messages", content=b"x" * (4096 + 1024 * 1024 + 1),
                                 headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert _post(server, "/v1/messages", GOOD).status_code == 200


# -- counts ---------------------------------------------------------------------------------------

def _tool(name: str) -> dict[str, Any]:
    return {"name": name, "input_schema": {"type": "object"}}


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_too_many_messages_or_tools_is_400(path: str) -> None:
    with running_server({"scripted": ScriptedBackend()}, max_messages=4, max_tools=3) as server:
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(5)]
        body = assert_anthropic_error(_post(server, path, {**GOOD, "messages": turns}), 400, "invalid_request_error")
        assert "too many messages" in body["error"]["message"]
        assert _post(server, path, {**GOOD, "messages": turns[:4]}).status_code == 200
        tools = [_tool(f"t{i}") for i in range(4)]
        body = assert_anthropic_error(_post(server, path, {**GOOD, "tools": tools}), 400, "invalid_request_error")
        assert "too many tools" in body["error"]["message"]
        assert _post(server, path, {**GOOD, "tools": tools[:3]}).status_code == 200


def test_default_limits_are_bounded() -> None:
    """Defaults a client cannot talk past: 32 MiB bodies, 10k messages, 1k tools, a 16-deep queue."""
    settings = load_settings({"auth_token": "x"})
    assert 0 < settings.max_body_bytes <= 64 * 1024 * 1024
    assert 0 < settings.max_messages <= 100_000
    assert 0 < settings.max_tools <= 10_000
    assert 0 < settings.queue_size <= 1024


# -- headers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"x-big": "a" * 70_000},
    {f"x-h{i}": "a" * 100 for i in range(1000)},
], ids=["one-huge-header", "many-headers"])
def test_headers_over_limit_are_431_and_server_lives(headers: dict[str, str]) -> None:
    with running_server({"scripted": ScriptedBackend()}) as server, server.client(timeout=30) as http:
        assert http.get("/health", headers=headers).status_code == 431
        assert http.get("/health").status_code == 200
        assert http.post("/v1/messages", json=GOOD).status_code == 200


def test_oversized_request_line_is_refused() -> None:
    with running_server({"scripted": ScriptedBackend()}) as server:
        status, _, _ = raw_http(server.base_url, f"GET /health?{'q' * 70_000} HTTP/1.1\r\nHost: 127.0.0.1")
        assert status in (414, 431, 400)
        assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200


# -- queue ----------------------------------------------------------------------------------------

def test_full_queue_is_529_with_retry_after() -> None:
    """More requests than the queue holds: the extra ones are overloaded_error + retry-after, the rest finish."""
    backend = ScriptedBackend(delay_s=0.02, default_reply="x" * 20)
    with running_server({"scripted": backend}, queue_size=1) as server:
        results: list[httpx.Response] = []
        lock = threading.Lock()

        def call() -> None:
            response = _post(server, "/v1/messages", GOOD)
            with lock:
                results.append(response)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        statuses = sorted(r.status_code for r in results)
        assert len(statuses) == 6 and set(statuses) <= {200, 529}, statuses
        assert 200 in statuses and 529 in statuses, statuses
        for response in results:
            if response.status_code == 529:
                assert_anthropic_error(response, 529, "overloaded_error")
                assert response.headers["retry-after"] == "1"
            else:
                assert_message(response.json())
        assert _post(server, "/v1/messages", GOOD).status_code == 200


# -- slow clients (slowloris) ---------------------------------------------------------------------

def test_runner_bounds_waitress() -> None:
    """The production Waitress adjustments: an idle timeout, a connection cap, header and body limits."""
    settings = load_settings({"auth_token": "x", "port": 0, "max_body_bytes": 1024 * 1024})
    pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
    server = runner.build_server(create_app(settings, pool), settings, port=0)
    try:
        adj = server.adj
        assert adj.channel_timeout <= 60, "idle connections must not linger (slowloris)"
        assert adj.cleanup_interval <= 30
        assert 0 < adj.connection_limit <= 1000
        assert adj.max_request_header_size <= 64 * 1024
        assert adj.max_request_body_size <= settings.max_body_bytes + 1024 * 1024
        assert adj.expose_tracebacks is False
        assert adj.clear_untrusted_proxy_headers is True
    finally:
        server.close()


@pytest.fixture
def short_idle_timeout(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Build servers as runner.build_server does, but with a 2 s idle timeout checked every second."""
    seen: dict[str, Any] = {}
    real = runner.create_server

    def create_server(app: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        kwargs.update(channel_timeout=TEST_CHANNEL_TIMEOUT, cleanup_interval=1)
        return real(app, **kwargs)

    monkeypatch.setattr(runner, "create_server", create_server)
    return seen


def _connect(server: RunningServer) -> socket.socket:
    parts = urlsplit(server.base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the server closes (or resets) the connection within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _timed_health(server: RunningServer) -> float:
    started = time.monotonic()
    response = httpx.get(server.base_url + "/health", timeout=10)
    assert response.status_code == 200
    return time.monotonic() - started


def test_slow_header_sender_is_dropped_while_others_are_served(short_idle_timeout: dict[str, Any]) -> None:
    """A client that starts a request and goes quiet is cut off after channel_timeout; others never wait."""
    with running_server({"scripted": ScriptedBackend()}) as server:
        assert short_idle_timeout["channel_timeout"] <= 60  # what build_server really asks for
        stalled = [_connect(server) for _ in range(5)]
        for sock in stalled:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        started = time.monotonic()
        with server.client(timeout=10) as http:
            for _ in range(10):
                assert http.post("/v1/messages", json=GOOD).status_code == 200
                assert _timed_health(server) < 2
        try:
            for sock in stalled:
                assert _closed_by_peer(sock, within=TEST_CHANNEL_TIMEOUT + 5), "stalled connection was not dropped"
            assert time.monotonic() - started >= TEST_CHANNEL_TIMEOUT - 0.5
        finally:
            for sock in stalled:
                sock.close()
        assert _timed_health(server) < 2


def test_slow_body_sender_is_dropped(short_idle_timeout: dict[str, Any]) -> None:
    """Complete headers announcing a body that never comes: dropped the same way, no worker thread held."""
    with running_server({"scripted": ScriptedBackend()}, threads=4) as server:
        stalled = [_connect(server) for _ in range(8)]  # more than the worker threads
        for sock in stalled:
            sock.sendall(f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {server.token}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"mo".encode())
        with server.client(timeout=10) as http:
            for _ in range(5):
                assert http.post("/v1/messages", json=GOOD).status_code == 200
        try:
            for sock in stalled:
                assert _closed_by_peer(sock, within=TEST_CHANNEL_TIMEOUT + 5)
        finally:
            for sock in stalled:
                sock.close()


@contextlib.contextmanager
def _tricklers(server: RunningServer, count: int, interval: float) -> Iterator[list[socket.socket]]:
    """``count`` connections each sending one more header byte every ``interval`` seconds."""
    socks = [_connect(server) for _ in range(count)]
    stop = threading.Event()

    def trickle() -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        while not stop.wait(interval):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield socks
    finally:
        stop.set()
        thread.join(timeout=5)
        for sock in socks:
            sock.close()


def test_trickling_clients_do_not_starve_normal_clients(short_idle_timeout: dict[str, Any]) -> None:
    """Headers are read by Waitress's async loop, not by worker threads: 40 tricklers cost no thread."""
    with running_server({"scripted": ScriptedBackend()}, threads=4) as server, \
            _tricklers(server, count=40, interval=0.5):
        time.sleep(TEST_CHANNEL_TIMEOUT + 1.5)  # past the idle timeout: tricklers are never idle
        with server.client(timeout=10) as http:
            for _ in range(10):
                started = time.monotonic()
                response = http.post("/v1/messages", json={**GOOD, "stream": True})
                assert response.status_code == 200
                assert time.monotonic() - started < 2


@pytest.mark.xfail(strict=True, reason="KNOWN LIMITATION: Waitress's channel_timeout is an idle timeout, so "
                                       "clients trickling a byte at a time keep their slots forever; once "
                                       "connection_limit slots are held nobody else is accepted (mitigate: "
                                       "loopback only, or a reverse proxy with header timeouts for --host)")
def test_trickling_clients_cannot_exhaust_connection_slots(monkeypatch: pytest.MonkeyPatch,
                                                           short_idle_timeout: dict[str, Any]) -> None:
    real = runner.create_server

    def capped(app: Any, **kwargs: Any) -> Any:
        kwargs["connection_limit"] = 8  # the real cap is max(100, threads * 4); 8 keeps the test small
        return real(app, **kwargs)

    monkeypatch.setattr(runner, "create_server", capped)
    with running_server({"scripted": ScriptedBackend()}) as server, _tricklers(server, count=8, interval=0.5):
        time.sleep(TEST_CHANNEL_TIMEOUT + 1.5)
        assert httpx.get(server.base_url + "/health", timeout=3).status_code == 200


def test_json_body_limit_applies_before_parsing() -> None:
    """A body just over the limit is refused without being decoded (no JSON error, a 413)."""
    with running_server({"scripted": ScriptedBackend()}, max_body_bytes=1024) as server, \
            server.client(timeout=30) as http:
        response = http.post("/v1/messages", content=b"{" * 2048, headers={"content-type": "application/json"})
        assert_anthropic_error(response, 413, "request_too_large")
        response = http.post("/v1/messages", content=json.dumps(GOOD), headers={"content-type": "application/json"})
        assert response.status_code == 200
