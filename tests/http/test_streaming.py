"""The SSE stream itself: exact event order, incremental delivery, keepalive pings, query strings."""

from __future__ import annotations

import json
import time

from tests.serverutil import running_server

REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
           "messages": [{"role": "user", "content": "hi"}]}


def read_events(response) -> list[tuple[str, dict, float]]:
    events, event_type = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event_type = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((event_type, json.loads(line[len("data: "):]), time.perf_counter()))
    return events


def test_event_sequence_matches_anthropic(server, scripted):
    scripted.enqueue("Hello!")
    with server.client() as http, http.stream("POST", "/v1/messages?beta=true", json=REQUEST) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    types = [t for t, _, _ in events]
    assert types[0] == "message_start"
    assert types[-2:] == ["message_delta", "message_stop"]
    body = [t for t in types if t != "ping"]
    assert body[1] == "content_block_start"
    assert body[-3] == "content_block_stop"
    assert all(t == "content_block_delta" for t in body[2:-3])
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == len(scripted.prompts[-1])
    assert start["model"] == "claude-sonnet-4-5"
    text = "".join(d["delta"]["text"] for t, d, _ in events if t == "content_block_delta")
    assert text == "Hello!"
    delta = next(d for t, d, _ in events if t == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == len("Hello!")


def test_first_event_arrives_long_before_generation_ends(scripted):
    scripted.delay_s = 0.05
    scripted.enqueue("x" * 40)  # about two seconds of generation
    with running_server({"scripted": scripted}) as server, server.client() as http:
        sent = time.perf_counter()
        with http.stream("POST", "/v1/messages", json=REQUEST) as response:
            events = read_events(response)
    first_delta = next(at for t, _, at in events if t == "content_block_delta")
    finished = events[-1][2]
    assert finished - sent > 1.5
    assert first_delta - sent < (finished - sent) / 2


def test_pings_keep_a_slow_stream_alive(scripted):
    scripted.delay_s = 0.3
    scripted.enqueue("abc")
    with running_server({"scripted": scripted}, ping_interval=0.05) as server, server.client() as http, \
            http.stream("POST", "/v1/messages", json=REQUEST) as response:
        types = [t for t, _, _ in read_events(response)]
    assert types.count("ping") >= 3
    assert types[-1] == "message_stop"


def test_any_query_string_is_accepted(server, scripted):
    scripted.enqueue("ok")
    with server.client() as http:
        response = http.post("/v1/messages?beta=true&foo=bar", json={**REQUEST, "stream": False})
    assert response.status_code == 200
    assert response.json()["content"][0]["text"] == "ok"


def test_disconnecting_client_cancels_generation(scripted):
    scripted.delay_s = 0.02
    scripted.enqueue("y" * 2000)
    with running_server({"scripted": scripted}) as server:
        with server.client() as http, http.stream("POST", "/v1/messages", json={**REQUEST, "max_tokens": 4000}) \
                as response:
            for line in response.iter_lines():
                if "content_block_delta" in line:
                    break
        deadline = time.time() + 10
        model = server.pool.get("scripted")
        while model.scheduler.active is not None and time.time() < deadline:
            time.sleep(0.05)
        assert model.scheduler.active is None
        assert scripted.tokens_streamed < 2000
        scripted.delay_s = 0
        scripted.enqueue("next")
        with server.client() as http:
            assert http.post("/v1/messages", json={**REQUEST, "stream": False}).json()["content"][0]["text"] == "next"
