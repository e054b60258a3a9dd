"""A stream that fell behind the engine sends the tokens queued meanwhile as one delta (scheduler.Job's
``merge_text``): the same text, the same tool call, well-formed events, only fewer of them.

The HTTP thread is held for a moment after ``message_start`` (its SSE encoder sleeps once), so the
scripted engine's whole answer waits in the job's queue; the reference is the same stream with merging
turned off (one delta per token).
"""

from __future__ import annotations

import json
import time

import pytest

from pensieve_server.anthropic.stream import fold_events
from pensieve_server.engine.base import Completion, TextDelta
from pensieve_server.engine.scheduler import _DONE, Job
from pensieve_server.http import messages as messages_module
from tests.http.test_messages_sdk import WEATHER_TOOL

REPLY = 'Let me check  the weather.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 300, "stream": True, "tools": [WEATHER_TOOL],
           "messages": [{"role": "user", "content": "Weather in Paris?"}]}


def stream_events(server) -> list[tuple[str, dict]]:
    events, event_type = [], None
    with server.client() as http, http.stream("POST", "/v1/messages", json=REQUEST) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                event_type = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((event_type, json.loads(line[len("data: "):])))
    return events


def test_a_late_reader_gets_the_same_message_in_fewer_deltas(server, scripted, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as unmerged:
        unmerged.setattr(Job, "_merge_queued", lambda self, first: first)
        scripted.enqueue(REPLY)
        reference = stream_events(server)

    encode, held = messages_module.encode_event, []

    def late_encode(event_type: str, data: dict) -> bytes:
        if not held:  # message_start: the engine finishes the answer while this thread waits
            held.append(event_type)
            time.sleep(0.5)
        return encode(event_type, data)

    monkeypatch.setattr(messages_module, "encode_event", late_encode)
    scripted.enqueue(REPLY)
    late = stream_events(server)

    def deltas(events):
        return [e for e in events if e[0] == "content_block_delta"]

    assert held == ["message_start"]
    assert len(deltas(late)) < len(deltas(reference)) // 4  # merged: one per wake, not one per token
    folded, expected = fold_events(late), fold_events(reference)
    assert folded["usage"]["output_tokens"] == expected["usage"]["output_tokens"] == len(REPLY)
    for message in (folded, expected):
        message.pop("id")
        message.pop("usage")  # the second request reads the first one's prompt from the prefix cache
        for block in message["content"]:
            block.pop("id", None)
    assert folded == expected
    assert [b["type"] for b in folded["content"]] == ["text", "tool_use"]
    assert folded["content"][0]["text"] == "Let me check  the weather."
    assert folded["content"][1]["input"] == {"city": "Paris"}


def test_merging_keeps_order_and_stops_at_other_events():
    job = Job([1], None)  # type: ignore[arg-type]
    for item in (TextDelta("a"), TextDelta("b"), TextDelta("c")):
        job.events.put(item)
    completion = Completion("end_turn", None, 1, 3)
    job.events.put(completion)
    job.events.put(_DONE)
    assert list(job.iter_events(merge_text=True)) == [TextDelta("abc"), completion]

    job = Job([1], None)  # type: ignore[arg-type]
    for item in (TextDelta("a"), RuntimeError("engine failed"), TextDelta("b")):
        job.events.put(item)
    events = job.iter_events(merge_text=True)
    assert next(events) == TextDelta("a")
    with pytest.raises(RuntimeError, match="engine failed"):
        next(events)

    job = Job([1], None)  # type: ignore[arg-type]
    for item in (TextDelta("a"), TextDelta("b"), _DONE):
        job.events.put(item)
    assert list(job.iter_events()) == [TextDelta("a"), TextDelta("b")]  # merging is asked for, never implied
