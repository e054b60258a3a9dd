"""Bounded soak: many concurrent streams, clients vanishing mid-stream, engine failures mid-generation.

16 clients share ``PENSIEVE_SOAK_REQUESTS`` streaming requests (default 500) over a ScriptedBackend
that sleeps a little per token; every fourth request hangs up after its first text delta. Nothing
may fail, the scheduler must be idle afterwards (cancelled jobs freed, nothing queued), and the
process RSS may grow by at most ``RSS_GROWTH_LIMIT`` bytes. Engine failures become an ``error``
SSE event (streaming) or a 500 ``api_error`` (non-streaming), and the next request succeeds.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from pensieve_server.engine.pool import LoadedModel
from pensieve_server.engine.scripted import ScriptedBackend
from tests.security import assert_anthropic_error, assert_message, assert_stream, env_int, parse_sse
from tests.serverutil import RunningServer, running_server

SOAK_REQUESTS = env_int("PENSIEVE_SOAK_REQUESTS", 500)
CLIENTS = env_int("PENSIEVE_SOAK_CLIENTS", 16)
REPLY = "soak test reply, token by token"  # 31 tokens: one per character
TOKEN_DELAY_S = 0.002
# Measured ~17 MiB (thread stacks, arenas) and flat from 500 to 1,500 requests; a leak of 100 KiB a
# request would pass 48 MiB within 500.
RSS_GROWTH_LIMIT = 48 * 1024 * 1024
GOOD: dict[str, Any] = {"model": "scripted", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def rss_bytes() -> int:
    """Resident memory of this process (server and clients share it), via psutil or /proc."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        pytest.skip("no psutil and no /proc/self/status")
    return psutil.Process().memory_info().rss


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.02)


def model_of(server: RunningServer) -> LoadedModel:
    return server.pool.get("scripted")


def scheduler_idle(server: RunningServer) -> bool:
    """Nothing generating, nothing queued (sequential ``active`` or batching ``running`` slots alike)."""
    scheduler = model_of(server).scheduler
    generating = getattr(scheduler, "active", None) is not None or bool(getattr(scheduler, "running", None))
    return not generating and scheduler.depth == 0 and scheduler._jobs.empty()


def stream_until_first_delta(server: RunningServer, body: dict[str, Any]) -> list[str]:
    """Open a stream on a raw socket, read up to the first text delta, then hang up for real.

    A raw socket (not a fresh httpx client per hang-up) keeps the client side from allocating TLS
    contexts, whose native memory would otherwise dominate the RSS measurement.
    """
    payload = json.dumps({**body, "stream": True}).encode()
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {server.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    parts = urlsplit(server.base_url)
    buffer = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + payload)
        while b"event: content_block_delta" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
    assert buffer.startswith(b"HTTP/1.1 200"), buffer[:300]
    return [name.decode() for name in re.findall(rb"event: (\w+)", buffer)]


def test_soak_concurrent_streams_with_disconnects() -> None:
    backend = ScriptedBackend(delay_s=TOKEN_DELAY_S, default_reply=REPLY)
    with running_server({"scripted": backend}, queue_size=4 * CLIENTS, threads=CLIENTS + 8,
                        ping_interval=0.5) as server:
        lock = threading.Lock()
        outcomes: Counter[str] = Counter()
        failures: list[str] = []

        def run_phase(total: int) -> None:
            """``CLIENTS`` threads share ``total`` requests; every fourth one hangs up mid-stream."""
            indexes = iter(range(total))

            def client() -> None:
                with server.client(timeout=60) as http:
                    while True:
                        with lock:
                            index = next(indexes, None)
                        if index is None:
                            return
                        try:
                            if index % 4 == 3:
                                events = stream_until_first_delta(server, GOOD)
                                started = [name for name in events if name != "ping"]  # pings while queued
                                assert started[0] == "message_start" and "error" not in events, events
                                outcome = "disconnected"
                            else:
                                response = http.post("/v1/messages", json={**GOOD, "stream": True})
                                assert response.status_code == 200, response.text[:300]
                                events = assert_stream(response.text)
                                assert events[-1][0] == "message_stop", events[-1]
                                outcome = "completed"
                        except Exception as exc:  # noqa: BLE001 - collected and reported together below
                            outcome = "failed"
                            with lock:
                                failures.append(f"request {index}: {type(exc).__name__}: {exc}")
                        with lock:
                            outcomes[outcome] += 1

            threads = [threading.Thread(target=client, name=f"soak-{i}") for i in range(CLIENTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=300)
            assert not any(thread.is_alive() for thread in threads), "a soak client hung"

        warmup = 4 * CLIENTS  # lazy imports, thread pools and allocator arenas settle first
        run_phase(warmup)
        wait_until(lambda: scheduler_idle(server), 10, "scheduler idle after the warm-up")
        outcomes.clear()
        tokens_before = backend.tokens_streamed
        rss_before = rss_bytes()
        started = time.monotonic()
        run_phase(SOAK_REQUESTS)
        elapsed = time.monotonic() - started
        assert not failures, failures[:10]
        assert outcomes["completed"] + outcomes["disconnected"] == SOAK_REQUESTS, outcomes
        assert outcomes["disconnected"] == SOAK_REQUESTS // 4, outcomes

        wait_until(lambda: scheduler_idle(server), 10, "scheduler idle after the soak")
        # Hung-up streams were cancelled, not generated to the end for nobody.
        streamed, full = backend.tokens_streamed - tokens_before, len(REPLY) * SOAK_REQUESTS
        assert streamed < full - outcomes["disconnected"] * len(REPLY) // 4, (streamed, full)
        with server.client(timeout=30) as http:
            for stream in (False, True):
                response = http.post("/v1/messages", json={**GOOD, "stream": stream})
                assert response.status_code == 200
                assert_stream(response.text) if stream else assert_message(response.json())
            health = http.get("/health").json()
            assert health["queue_depth"] == 0
            metrics = http.get("/metrics").text
        assert 'status="500"' not in metrics and 'status="529"' not in metrics
        growth = rss_bytes() - rss_before
        print(f"soak: {SOAK_REQUESTS} requests by {CLIENTS} clients in {elapsed:.1f}s, {dict(outcomes)}, "
              f"tokens {streamed}/{full}, RSS growth {growth / 2**20:.1f} MiB")
        assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB"


def test_disconnect_mid_generation_frees_the_scheduler() -> None:
    """A 300-token reply at 20 ms/token; the client leaves after one delta: the worker stops within a token
    or two and the next request is served at once."""
    backend = ScriptedBackend(delay_s=0.02, default_reply="ok")
    backend.enqueue("x" * 300)
    with running_server({"scripted": backend}) as server:
        started = time.monotonic()
        events = stream_until_first_delta(server, GOOD)
        assert events[:2] == ["message_start", "content_block_start"]
        wait_until(lambda: scheduler_idle(server), 3, "worker freed after the client left")
        assert time.monotonic() - started < 3
        assert backend.tokens_streamed < 60, backend.tokens_streamed
        with server.client(timeout=10) as http:
            response = http.post("/v1/messages", json={**GOOD, "stream": True})
            assert response.status_code == 200
            assert_stream(response.text)


def test_disconnect_while_queued_never_reaches_the_engine() -> None:
    """A client that leaves while waiting behind another is cancelled; its prompt is never generated.

    The first request holds the engine until the test lets it go, so the order does not depend on speed.
    """
    backend = ScriptedBackend(delay_s=0.01, default_reply="ok")
    backend.enqueue("y" * 100_000)  # holds the engine until its client leaves
    release = threading.Event()
    with running_server({"scripted": backend}, ping_interval=0.2) as server:
        def holding_request() -> None:
            with server.client(timeout=60) as http, http.stream("POST", "/v1/messages", json={
                    **GOOD, "stream": True, "max_tokens": 100_000,
                    "messages": [{"role": "user", "content": "first"}]}) as response:
                for _ in response.iter_lines():
                    if release.is_set():
                        return

        holder = threading.Thread(target=holding_request)
        holder.start()
        wait_until(lambda: not scheduler_idle(server) and backend.prompts, 10, "first job running")
        queued_body = {**GOOD, "stream": True, "messages": [{"role": "user", "content": "queued and gone"}]}
        with httpx.Client(base_url=server.base_url, headers={"x-api-key": server.token}, timeout=10) as http, \
                http.stream("POST", "/v1/messages", json=queued_body) as response:
            assert response.status_code == 200
            # Queued: keepalive pings until the engine takes it (message_start waits for its prefix match).
            assert next(response.iter_lines()) == "event: ping"
        queue = model_of(server).scheduler._jobs
        wait_until(lambda: any(job is not None and job.cancel.is_set() for job in list(queue.queue)), 30,
                   "the queued job cancelled while still waiting")  # noticed at a ping write
        release.set()
        holder.join(timeout=30)
        wait_until(lambda: scheduler_idle(server), 10, "scheduler idle")
        assert not any("queued and gone" in prompt for prompt in backend.prompts)
        with server.client(timeout=10) as http:
            assert http.post("/v1/messages", json=GOOD).status_code == 200


@pytest.mark.parametrize("fail_after", [0, 5])
def test_engine_failure_mid_stream_is_an_error_event(fail_after: int) -> None:
    backend = ScriptedBackend(default_reply=REPLY, fail_after=fail_after)
    with running_server({"scripted": backend}) as server, server.client(timeout=30) as http:
        response = http.post("/v1/messages", json={**GOOD, "stream": True})
        assert response.status_code == 200  # headers went out before the engine failed
        events = parse_sse(response.text)
        assert events[0][0] == "message_start"
        assert events[-1][0] == "error", events[-1]
        assert events[-1][1]["error"]["type"] == "api_error"
        assert "message_stop" not in [name for name, _ in events]
        text = "".join(data["delta"].get("text", "") for name, data in events if name == "content_block_delta")
        assert text == REPLY[:fail_after]
        assert_stream(response.text)
        wait_until(lambda: scheduler_idle(server), 3, "scheduler idle after the failure")
        backend.fail_after = None
        response = http.post("/v1/messages", json={**GOOD, "stream": True})
        events = assert_stream(response.text)
        assert events[-1][0] == "message_stop"


@pytest.mark.parametrize("fail_after", [0, 5])
def test_engine_failure_non_streaming_is_500_api_error(fail_after: int) -> None:
    backend = ScriptedBackend(default_reply=REPLY, fail_after=fail_after)
    with running_server({"scripted": backend}) as server, server.client(timeout=30) as http:
        response = http.post("/v1/messages", json=GOOD)
        body = assert_anthropic_error(response, 500, "api_error")
        assert "Traceback" not in body["error"]["message"]
        wait_until(lambda: scheduler_idle(server), 3, "scheduler idle after the failure")
        backend.fail_after = None
        response = http.post("/v1/messages", json=GOOD)
        assert response.status_code == 200
        message = response.json()
        assert_message(message)
        assert message["content"][0]["text"] == REPLY


def test_repeated_failures_do_not_kill_the_worker() -> None:
    """Every other generation fails; the engine thread survives them all and keeps serving."""
    backend = ScriptedBackend(default_reply=REPLY)
    with running_server({"scripted": backend}) as server, server.client(timeout=30) as http:
        for round_ in range(20):
            backend.fail_after = 3 if round_ % 2 else None
            response = http.post("/v1/messages", json={**GOOD, "stream": bool(round_ % 3)})
            assert response.status_code in (200, 500)
            if round_ % 2 == 0:
                assert response.status_code == 200
        assert model_of(server).scheduler._thread.is_alive()
        wait_until(lambda: scheduler_idle(server), 3, "scheduler idle")
