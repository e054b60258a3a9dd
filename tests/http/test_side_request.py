"""Claude Code's side request never holds up the turn: requests that arrive together run together.

The real server with the real embedded model and the default ``parallel`` (auto). Claude Code sends
a small title request on the haiku name 1-5 ms before each turn; here it is made long (its prefill
alone takes several engine steps) so the order of events proves the point without timing anything:
the main request, sent once the side request is in the engine, starts (its ``message_start``, sent
when the engine admits it) before the side request has finished. With one slot it would start only
after the side request's last event.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pensieve_server.engine import parallel
from pensieve_server.engine.scheduler import BatchScheduler
from pensieve_server.models.embedded import EMBEDDED_NAME
from tests.requirements import require_llama_cpp
from tests.serverutil import RunningServer, embedded_llamacpp_server

require_llama_cpp()

SIDE = {"model": "claude-3-5-haiku-latest", "max_tokens": 48, "stream": True, "tools": [],
        "system": "Generate a concise, sentence-case title (3-7 words) that captures the session.",
        "messages": [{"role": "user", "content": "<session>\n" + "The build failed again with a linker error. " * 150
                      + "\n</session>\n\nWrite the title."}]}
MAIN = {"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": True, "system": "You are a coding assistant.",
        "messages": [{"role": "user", "content": "What is 2+2?"}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parallel, "available_bytes", lambda: 64 * 2**30)  # auto picks two slots here
        with embedded_llamacpp_server(tmp_path_factory.mktemp("pensieve-home"), context_length=4096) as running:
            yield running


def run(server: RunningServer, name: str, body: dict[str, Any], timeline: list[tuple[str, str]],
        lock: threading.Lock) -> None:
    with server.client(timeout=600) as client, client.stream("POST", "/v1/messages", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                kind = json.loads(line[6:])["type"]
                with lock:
                    timeline.append((name, kind))


def test_the_default_gives_two_slots(server: RunningServer) -> None:
    model = server.pool.get(EMBEDDED_NAME)
    assert isinstance(model.scheduler, BatchScheduler) and model.backend.parallel == 2


def test_a_turn_starts_while_its_side_request_is_still_running(server: RunningServer) -> None:
    timeline: list[tuple[str, str]] = []
    lock = threading.Lock()
    side = threading.Thread(target=run, args=(server, "side", SIDE, timeline, lock))
    side.start()
    deadline = time.monotonic() + 600
    while ("side", "message_start") not in timeline and time.monotonic() < deadline:
        time.sleep(0.005)  # the side request is in the engine (admitted, before its prefill): now the turn
    run(server, "main", MAIN, timeline, lock)
    side.join()
    events = [event for event in timeline if event[1] != "ping"]
    main_start = events.index(("main", "message_start"))
    side_stop = events.index(("side", "message_stop"))
    assert main_start < side_stop, events  # the turn did not wait for the side request to finish
    assert ("main", "message_stop") in events and ("side", "message_stop") in events
