"""``message_start`` goes out when the engine knows its prefix match, before prefill; pings keep a
queued request's connection alive before it. The scripted engine makes the order exact."""

from __future__ import annotations

import json
import threading
from typing import Any

import anthropic

from pensieve_server.engine.scripted import ScriptedBackend
from tests.serverutil import RunningServer, running_server

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 200, "stream": True,
        "messages": [{"role": "user", "content": "Tell me something."}]}


def events(server: RunningServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out, kind = [], ""
    with server.client() as client, client.stream("POST", "/v1/messages", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


def test_a_queued_request_gets_pings_then_message_start_with_the_split() -> None:
    backend = ScriptedBackend(delay_s=0.05)
    backend.default_reply = "x" * 120  # 6 s of output hold the engine
    with running_server({"scripted": backend}, ping_interval=0.2) as server:
        first = threading.Thread(target=events, args=(server, BODY))
        first.start()
        while not backend.prompts:  # the first request has started
            threading.Event().wait(0.01)
        second = events(server, BODY)  # the same prompt: it reuses all but the last token
        first.join()
    kinds = [kind for kind, _ in second]
    assert kinds[0] == "ping" and "ping" in kinds[: kinds.index("message_start")]
    start = next(data for kind, data in second if kind == "message_start")["message"]["usage"]
    final = next(data for kind, data in second if kind == "message_delta")["usage"]
    assert start["cache_read_input_tokens"] == final["cache_read_input_tokens"] > 0
    assert start["input_tokens"] == final["input_tokens"] == 1


def test_the_sdk_streams_a_queued_request() -> None:
    backend = ScriptedBackend(delay_s=0.05)
    backend.default_reply = "y" * 120
    with running_server({"scripted": backend}, ping_interval=0.2) as server:
        body = {k: v for k, v in BODY.items() if k != "stream"}
        client = anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0)
        first = threading.Thread(target=client.messages.create, kwargs=body)
        first.start()
        while not backend.prompts:
            threading.Event().wait(0.01)
        with client.messages.stream(**body) as stream:
            seen = [event.type for event in stream]
            final = stream.get_final_message()
        first.join()
    assert seen[0] == "message_start" and final.content[0].text == "y" * 120
    assert final.usage.cache_read_input_tokens > 0
