"""Stream events: golden SSE transcripts, folding, and the official SDK accumulating our bytes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

try:  # newer SDKs talk through httpx2 and refuse httpx objects
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older SDKs
    import httpx  # type: ignore[no-redef]

from pensieve_server.anthropic.errors import InternalError
from pensieve_server.anthropic.sse import encode_event, error_event, ping_event
from pensieve_server.anthropic.stream import MessageAssembler, StreamEvent, fold_events, new_message_id
from pensieve_server.anthropic.tools import (
    TextPiece,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallParser,
    ToolCallStart,
)
from pensieve_server.engine.base import Completion

WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

# message_start carries the prompt's real split (input, cache read), known before prefill, as the API sends it.
USAGE_START = (
    '"usage":{"input_tokens":%d,"cache_creation_input_tokens":0,"cache_read_input_tokens":%d,'
    '"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":1,'
    '"service_tier":"standard"}'
)

GOLDEN_TEXT = (
    'event: message_start\n'
    'data: {"type":"message_start","message":{"id":"msg_01TEST","type":"message","role":"assistant",'
    '"model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,' + USAGE_START % (12, 0) + '}}\n\n'
    'event: content_block_start\n'
    'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", wörld! 🌍"}}\n\n'
    'event: content_block_stop\n'
    'data: {"type":"content_block_stop","index":0}\n\n'
    'event: message_delta\n'
    'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    '"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":4}}\n\n'
    'event: message_stop\n'
    'data: {"type":"message_stop"}\n\n'
).encode()

GOLDEN_TOOL = (
    'event: message_start\n'
    'data: {"type":"message_start","message":{"id":"msg_01TEST","type":"message","role":"assistant",'
    '"model":"claude-opus-4-8","content":[],"stop_reason":null,"stop_sequence":null,' + USAGE_START % (5, 25) + '}}\n\n'
    'event: content_block_start\n'
    'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}\n\n'
    'event: content_block_stop\n'
    'data: {"type":"content_block_stop","index":0}\n\n'
    'event: content_block_start\n'
    'data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
    '"id":"toolu_01A","name":"get_weather","input":{}}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\":"}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"Paris\\"}"}}\n\n'
    'event: content_block_stop\n'
    'data: {"type":"content_block_stop","index":1}\n\n'
    'event: message_delta\n'
    'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    '"usage":{"input_tokens":5,"cache_creation_input_tokens":0,"cache_read_input_tokens":25,"output_tokens":20}}\n\n'
    'event: message_stop\n'
    'data: {"type":"message_stop"}\n\n'
).encode()


def text_events() -> tuple[MessageAssembler, list[StreamEvent]]:
    assembler = MessageAssembler(model="claude-sonnet-4-5", input_tokens=12, message_id="msg_01TEST")
    events = [*assembler.start(), *assembler.on_text("Hello"), *assembler.on_text(", wörld! 🌍"),
              *assembler.finish(Completion("end_turn", None, 12, 4))]
    return assembler, events


def tool_events() -> tuple[MessageAssembler, list[StreamEvent]]:
    assembler = MessageAssembler(model="claude-opus-4-8", input_tokens=30, cache_read_input_tokens=25, tools=[WEATHER],
                                 message_id="msg_01TEST")
    pieces = [TextPiece("Let me check."), ToolCallStart("toolu_01A", "get_weather"), ToolCallDelta('{"city":'),
              ToolCallDelta(' "Paris"}'), ToolCallEnd({"city": "Paris"})]
    events = [*assembler.start()]
    for piece in pieces:
        events += assembler.on_piece(piece)
    events += assembler.finish(Completion("end_turn", None, 30, 20, cached_tokens=25))
    return assembler, events


def sse(events: list[StreamEvent]) -> bytes:
    return b"".join(encode_event(*event) for event in events)


# -- golden transcripts ---------------------------------------------------------------------------

def test_golden_text_reply() -> None:
    _, events = text_events()
    assert sse(events) == GOLDEN_TEXT


def test_golden_text_then_tool_use() -> None:
    _, events = tool_events()
    assert sse(events) == GOLDEN_TOOL


def test_methods_return_exactly_the_recorded_events() -> None:
    assembler, events = tool_events()
    assert assembler.events == events


# -- folding --------------------------------------------------------------------------------------

def test_text_message_is_the_events_folded() -> None:
    assembler, events = text_events()
    message = assembler.message()
    assert message == fold_events(events)
    assert message == {
        "id": "msg_01TEST", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello, wörld! 🌍"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": 4, "service_tier": "standard"},
    }


def test_tool_message_is_the_events_folded() -> None:
    assembler, events = tool_events()
    message = assembler.message()
    assert message == fold_events(events)
    assert message["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["input_tokens"] == 5
    assert message["usage"]["cache_read_input_tokens"] == 25


def test_fold_skips_pings_and_requires_message_stop() -> None:
    _, events = text_events()
    with_pings = [events[0], ("ping", {"type": "ping"}), *events[1:]]
    assert fold_events(with_pings) == fold_events(events)
    with pytest.raises(InternalError):
        fold_events(events[:-1])
    with pytest.raises(InternalError):
        fold_events([])


@pytest.mark.parametrize("raw", ['{"city": "Os', "[1, 2]"])
def test_fold_rejects_broken_tool_arguments(raw: str) -> None:
    assembler = MessageAssembler(model="m", input_tokens=1)
    events = [*assembler.on_tool_start("toolu_1", "get_weather"), *assembler.on_tool_delta(raw),
              *assembler.on_tool_end({}), *assembler.finish(Completion("end_turn", None, 1, 1))]
    with pytest.raises(InternalError, match="tool call arguments"):
        fold_events(events)


# -- block rules ----------------------------------------------------------------------------------

def run(pieces: list[Any], completion: Completion | None = None, **kwargs: Any) -> list[StreamEvent]:
    assembler = MessageAssembler(model="m", input_tokens=3, message_id="msg_01X", **kwargs)
    events = assembler.start()
    for piece in pieces:
        events += assembler.on_piece(piece)
    events += assembler.finish(completion or Completion("end_turn", None, 3, 1))
    assert assembler.message() == fold_events(events)
    return events


def types(events: list[StreamEvent]) -> list[str]:
    return [event_type for event_type, _ in events]


def test_empty_output_has_no_content_blocks() -> None:
    events = run([])
    assert types(events) == ["message_start", "message_delta", "message_stop"]
    assert fold_events(events)["content"] == []


def test_whitespace_only_text_never_opens_a_block() -> None:
    events = run([TextPiece(""), TextPiece("\n"), TextPiece("  ")])
    assert fold_events(events)["content"] == []


def test_held_whitespace_is_kept_once_real_text_arrives() -> None:
    events = run([TextPiece("\n"), TextPiece("Hi"), TextPiece(" there\n")])
    assert fold_events(events)["content"] == [{"type": "text", "text": "\nHi there\n"}]
    assert types(events).count("content_block_start") == 1


def test_whitespace_before_a_tool_call_is_dropped() -> None:
    events = run([TextPiece("\n\n"), ToolCallStart("toolu_1", "get_weather"), ToolCallDelta('{"city":"Oslo"}'),
                  ToolCallEnd({"city": "Oslo"})])
    message = fold_events(events)
    assert [block["type"] for block in message["content"]] == ["tool_use"]
    assert events[1][1]["index"] == 0


def test_two_tool_calls_get_consecutive_indices() -> None:
    pieces = [TextPiece("Checking both."),
              ToolCallStart("toolu_1", "get_weather"), ToolCallDelta('{"city":"Oslo"}'), ToolCallEnd({"city": "Oslo"}),
              ToolCallStart("toolu_2", "get_weather"), ToolCallDelta('{"city":"Rome"}'), ToolCallEnd({"city": "Rome"})]
    events = run(pieces)
    starts = [data["index"] for event_type, data in events if event_type == "content_block_start"]
    stops = [data["index"] for event_type, data in events if event_type == "content_block_stop"]
    assert starts == stops == [0, 1, 2]
    message = fold_events(events)
    assert [block.get("input") for block in message["content"]] == [None, {"city": "Oslo"}, {"city": "Rome"}]


def test_tool_end_without_deltas_sends_the_arguments() -> None:
    events = run([ToolCallStart("toolu_1", "get_weather"), ToolCallEnd({"city": "Lima"})])
    deltas = [data["delta"] for event_type, data in events if event_type == "content_block_delta"]
    assert deltas == [{"type": "input_json_delta", "partial_json": '{"city":"Lima"}'}]
    assert fold_events(events)["content"][0]["input"] == {"city": "Lima"}


def test_tool_without_arguments_folds_to_empty_input() -> None:
    events = run([ToolCallStart("toolu_1", "TaskList"), ToolCallEnd({})])
    assert fold_events(events)["content"] == [{"type": "tool_use", "id": "toolu_1", "name": "TaskList", "input": {}}]


@pytest.mark.parametrize(
    ("completion", "reason", "sequence"),
    [
        (Completion("end_turn", None, 3, 2), "end_turn", None),
        (Completion("max_tokens", None, 3, 2), "max_tokens", None),
        (Completion("stop_sequence", "STOP", 3, 2), "stop_sequence", "STOP"),
    ],
)
def test_stop_reason_passes_through_without_tool_calls(completion: Completion, reason: str, sequence: str | None) -> None:
    delta = run([TextPiece("ok")], completion)[-2][1]
    assert delta["delta"] == {"stop_reason": reason, "stop_sequence": sequence}
    assert delta["usage"]["output_tokens"] == 2


@pytest.mark.parametrize("completion", [Completion("max_tokens", None, 3, 9), Completion("stop_sequence", "X", 3, 9)])
def test_any_tool_call_makes_the_stop_reason_tool_use(completion: Completion) -> None:
    events = run([ToolCallStart("toolu_1", "get_weather"), ToolCallDelta('{"city":"Oslo"}'),
                  ToolCallEnd({"city": "Oslo"}), TextPiece("trailing")], completion)
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def test_finish_closes_an_open_block_and_is_final() -> None:
    assembler = MessageAssembler(model="m", input_tokens=3)
    assembler.start()
    assembler.on_text("partial")
    end = assembler.finish(Completion("max_tokens", None, 3, 1))
    assert types(end) == ["content_block_stop", "message_delta", "message_stop"]
    assert assembler.finish(Completion("end_turn", None, 3, 1)) == []
    assert assembler.on_text("late") == []
    assert assembler.message()["content"] == [{"type": "text", "text": "partial"}]


def test_message_start_is_sent_once_even_if_start_is_skipped() -> None:
    assembler = MessageAssembler(model="m", input_tokens=3)
    events = assembler.on_text("hi")
    assert types(events) == ["message_start", "content_block_start", "content_block_delta"]
    assert assembler.start() == []


def test_cache_hint_at_start_and_exact_split_at_finish() -> None:
    assembler = MessageAssembler(model="m", input_tokens=100, cache_read_input_tokens=80)
    usage = assembler.start()[0][1]["message"]["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"]) == (20, 80)
    assembler.finish(Completion("end_turn", None, 100, 1, cached_tokens=90))
    usage = assembler.message()["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"], usage["output_tokens"]) == (10, 90, 1)


def test_message_ids_look_like_anthropic_ids() -> None:
    ids = {new_message_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("msg_01") and len(i) == 28 and i.isascii() and i[4:].isalnum() for i in ids)
    assert MessageAssembler(model="m", input_tokens=1).message_id.startswith("msg_01")


def test_on_piece_rejects_other_objects() -> None:
    with pytest.raises(TypeError):
        MessageAssembler(model="m", input_tokens=1).on_piece("text")  # type: ignore[arg-type]


# -- SSE framing ----------------------------------------------------------------------------------

def test_encode_event_frame() -> None:
    assert encode_event("message_stop", {"type": "message_stop"}) == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    frame = encode_event("x", {"text": "a\nb\u2028é"})
    assert frame.count(b"\n") == 3 and "é".encode() in frame
    with pytest.raises(ValueError):
        encode_event("bad\ntype", {})


def test_ping_and_error_frames() -> None:
    assert ping_event() == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert error_event("overloaded_error", "Overloaded") == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )


# -- the official SDK on our bytes ---------------------------------------------------------------

class _Chunks(httpx.SyncByteStream):
    """Delivers the body in tiny pieces, splitting lines and multi-byte characters, as a network may."""

    def __init__(self, data: bytes, size: int = 7) -> None:
        self.data, self.size = data, size

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.data), self.size):
            yield self.data[start:start + self.size]


def sdk(handler: Callable[[httpx.Request], httpx.Response]) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="test", base_url="http://pensieve.test", max_retries=0,
                               http_client=httpx.Client(transport=httpx.MockTransport(handler)))


def streaming(data: bytes) -> anthropic.Anthropic:
    return sdk(lambda _: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Chunks(data)))


def without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


REQUEST: dict[str, Any] = {"model": "local-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("build", [text_events, tool_events])
def test_sdk_stream_accumulator_builds_our_folded_message(build: Callable[[], tuple[MessageAssembler, Any]]) -> None:
    assembler, events = build()
    with streaming(sse(events)).messages.stream(**REQUEST) as stream:
        seen = [event.type for event in stream]
        final = stream.get_final_message()
    assert seen[0] == "message_start" and seen[-1] == "message_stop"
    assert final.model_dump(mode="json", exclude_none=True) == without_none(assembler.message())


def test_sdk_text_stream_and_tool_input_events() -> None:
    _, events = text_events()
    with streaming(sse(events)).messages.stream(**REQUEST) as stream:
        assert "".join(stream.text_stream) == "Hello, wörld! 🌍"
    _, events = tool_events()
    with streaming(sse(events)).messages.stream(**REQUEST) as stream:
        snapshots = [event.snapshot for event in stream if event.type == "input_json"]
    assert snapshots == [{}, {"city": "Paris"}]


def test_sdk_non_streaming_parses_our_message() -> None:
    assembler, _ = tool_events()
    body = assembler.message()
    message = sdk(lambda _: httpx.Response(200, json=body)).messages.create(**REQUEST)
    assert message.model_dump(mode="json", exclude_none=True) == without_none(body)
    assert message.content[1].input == {"city": "Paris"}


def test_sdk_raw_stream_with_pings_matches_events() -> None:
    _, events = text_events()
    data = sse(events[:1]) + ping_event() + sse(events[1:]) + ping_event()
    raw = list(streaming(data).messages.create(**REQUEST, stream=True))
    assert [event.type for event in raw] == types(events)
    assert [event.to_dict() for event in raw] == [data for _, data in events]


def test_sdk_reads_pings_sent_before_message_start() -> None:
    """While a request waits for the model, pings go out before message_start (whose usage needs the
    prefix match); the SDK skips them and sees the split message_start reports."""
    _, events = tool_events()
    data = ping_event() + ping_event() + sse(events[:1]) + ping_event() + sse(events[1:])
    raw = list(streaming(data).messages.create(**REQUEST, stream=True))
    assert [event.to_dict() for event in raw] == [data for _, data in events]
    with streaming(data).messages.stream(**REQUEST) as stream:
        first = next(iter(stream))
        final = stream.get_final_message()
    assert first.type == "message_start"
    assert (first.message.usage.input_tokens, first.message.usage.cache_read_input_tokens) == (5, 25)
    assert final.model_dump(mode="json", exclude_none=True) == without_none(fold_events(events))


def test_sdk_raises_a_mid_stream_error_event() -> None:
    _, events = text_events()
    data = sse(events[:3]) + error_event("overloaded_error", "Overloaded")
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"), \
            streaming(data).messages.stream(**REQUEST) as stream:
        stream.get_final_message()


# -- with the real tool-call parser ---------------------------------------------------------------

def test_parser_to_assembler_to_sdk() -> None:
    output = 'I will look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'
    parser = ToolCallParser([WEATHER], new_id=lambda: "toolu_01FIXED")
    assembler = MessageAssembler(model="claude-opus-4-8", input_tokens=40, tools=[WEATHER])
    events = assembler.start()
    for start in range(0, len(output), 5):
        for piece in parser.feed(output[start:start + 5]):
            events += assembler.on_piece(piece)
    for piece in parser.finish():
        events += assembler.on_piece(piece)
    events += assembler.finish(Completion("end_turn", None, 40, 30))
    with streaming(sse(events)).messages.stream(**REQUEST) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert final.content[0].text.strip() == "I will look."
    assert final.content[1].id == "toolu_01FIXED"
    assert final.content[1].input == {"city": "Zürich"}
    assert final.stop_reason == "tool_use"
    assert final.model_dump(mode="json", exclude_none=True) == without_none(assembler.message())
