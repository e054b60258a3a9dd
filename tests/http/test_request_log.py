"""The request log and the usage in ``message_start``, on the real server with the real embedded model.

One line per request at ``info`` (what ``pensieve logs`` shows): its numbers are the ones the client
saw in ``usage``; no prompt text and no token ever reach it. ``message_start`` already carries the
real split between fresh and cached prompt tokens. Context fitting's steps, which need exact token
counts, are checked with the scripted engine.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from pensieve_server.engine.scripted import ScriptedBackend
from tests.requirements import require_llama_cpp
from tests.serverutil import RunningServer, embedded_llamacpp_server, running_server

require_llama_cpp()

LOGGER = "pensieve_server.requests"
SECRET_WORD = "Quokkazanzibar"  # in every prompt here; must never reach the log
SYSTEM = f"You are a helpful assistant. The password is {SECRET_WORD}."


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    with embedded_llamacpp_server(tmp_path_factory.mktemp("pensieve-home")) as running:
        yield running


@pytest.fixture
def request_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def line_for(caplog: pytest.LogCaptureFixture, request_id: str, timeout_s: float = 120.0) -> str:
    """The request's line (the server writes it from its own thread, at the latest when it notices
    the client has gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [line for line in lines(caplog) if line.startswith(f"request {request_id} ")]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no log line for {request_id}: {lines(caplog)}")


def fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(line) if "=" in part)


def stream(server: RunningServer, body: dict[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(request id, events) of a streamed request, pings included."""
    events = []
    with server.client() as client, client.stream("POST", "/v1/messages", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
        return response.headers["request-id"], events


def usage_of(events: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(message_start usage, message_delta usage, stop reason)."""
    start = next(data for kind, data in events if kind == "message_start")["message"]["usage"]
    delta = next(data for kind, data in events if kind == "message_delta")
    return start, delta["usage"], delta["delta"]["stop_reason"]


def chat(question: str, max_tokens: int = 24, model: str = "claude-3-5-haiku-latest") -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "system": SYSTEM,
            "messages": [{"role": "user", "content": question}]}


def test_a_request_leaves_one_line_with_the_numbers_the_client_saw(server: RunningServer, request_log) -> None:
    request_id, events = stream(server, chat("What is the capital of France?"))
    start, final, stop_reason = usage_of(events)
    line = line_for(request_log, request_id)
    values = fields(line)
    assert values["model"] == "claude-3-5-haiku-latest" and values["local"] == "smollm2-135m"
    assert values["engine"] == "llamacpp" and values["fit"] == "none"
    assert int(values["prompt"]) == final["input_tokens"] + final["cache_read_input_tokens"]
    assert int(values["cached"]) == final["cache_read_input_tokens"] and values["disk"] == "0"
    assert int(values["output"]) == final["output_tokens"] and values["stop"] == stop_reason
    queue, prefill, ttft = (float(values[k].removesuffix("s")) for k in ("queue", "prefill", "ttft"))
    assert queue >= 0 and prefill >= 0 and ttft == pytest.approx(queue + prefill, abs=0.011)
    assert float(values["decode"].removesuffix("tok/s")) >= 0
    # message_start already had the real split, the same as message_delta's
    assert (start["input_tokens"], start["cache_read_input_tokens"]) == (final["input_tokens"],
                                                                        final["cache_read_input_tokens"])
    assert SECRET_WORD not in "\n".join(lines(request_log)) and server.token not in "\n".join(lines(request_log))


def test_the_next_turn_reports_its_cache_read_in_message_start_and_in_the_log(server: RunningServer,
                                                                              request_log) -> None:
    first = chat("Name three colours.", max_tokens=8)
    _, events = stream(server, first)
    answer = "".join(d["delta"].get("text", "") for k, d in events if k == "content_block_delta")
    follow = {**first, "messages": [*first["messages"], {"role": "assistant", "content": answer or "Red."},
                                    {"role": "user", "content": "And three animals?"}]}
    request_id, events = stream(server, follow)
    start, final, _ = usage_of(events)
    assert start["cache_read_input_tokens"] > 0  # known before prefill, sent before the first token
    assert start["cache_read_input_tokens"] == final["cache_read_input_tokens"]
    assert start["input_tokens"] == final["input_tokens"]
    assert int(fields(line_for(request_log, request_id))["cached"]) == final["cache_read_input_tokens"]
    kinds = [kind for kind, _ in events]
    assert kinds.index("message_start") < kinds.index("content_block_start")


def test_the_sdk_reads_the_split_from_message_start(server: RunningServer) -> None:
    client = anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0, timeout=300)
    body = chat("Say hello.", max_tokens=8)
    client.messages.create(**body)
    with client.messages.stream(**body) as events:
        first = next(iter(events))
        final = events.get_final_message()
    assert first.type == "message_start"
    assert first.message.usage.cache_read_input_tokens == final.usage.cache_read_input_tokens > 0
    assert first.message.usage.input_tokens == final.usage.input_tokens


def test_refused_and_cancelled_requests_leave_a_line_with_the_reason(server: RunningServer, request_log) -> None:
    with server.client() as client:
        refused = client.post("/v1/messages", json={"model": "claude-sonnet-4-5", "messages": []})
    assert refused.status_code == 400
    line = line_for(request_log, refused.headers["request-id"])
    assert "rejected: 400 invalid_request_error:" in line and "max_tokens" in line

    story = chat("Write a very long story about a dragon.", max_tokens=2000)
    with server.client() as client, client.stream("POST", "/v1/messages", json={**story, "stream": True}) as response:
        request_id = response.headers["request-id"]
        for text in response.iter_text():
            if "content_block_delta" in text:
                break  # the client goes away mid-answer
    line = line_for(request_log, request_id)
    assert "cancelled:" in line and "local=smollm2-135m" in line
    assert SECRET_WORD not in "\n".join(lines(request_log))


def test_context_fitting_steps_are_in_the_line(request_log) -> None:
    """Exact token counts: the scripted engine (one token per character) with a small context."""
    backend = ScriptedBackend(context_length=1200)
    with running_server({"scripted": backend}) as scripted:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 50,
                "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "x" * 150}
                             for i in range(15)]}
        request_id, events = stream(scripted, body)
    values = fields(line_for(request_log, request_id))
    assert re.fullmatch(r"dropped \d+ old messages?", values["fit"]), values["fit"]
    assert values["engine"] == "scripted" and values["stop"] == usage_of(events)[2]
    assert int(values["prompt"]) == len(backend.prompts[-1]) < 1200
