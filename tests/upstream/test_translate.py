"""Anthropic ⇄ OpenAI translation, both ways, without any server."""

from __future__ import annotations

import json

import pytest

from pensieve_server.anthropic.errors import InternalError
from pensieve_server.anthropic.stream import MessageAssembler, fold_events
from pensieve_server.anthropic.tools import TextPiece, ToolCallDelta, ToolCallEnd, ToolCallStart
from pensieve_server.anthropic.validate import parse_messages_request
from pensieve_server.upstream import passthrough
from pensieve_server.upstream.client import base_url, display_url, sse_events
from pensieve_server.upstream.errors import from_status
from pensieve_server.upstream.tokens import estimate_tokens
from pensieve_server.upstream.translate import (
    ChunkTranslator,
    response_as_chunk,
    to_openai_request,
)
from tests.upstream.fakes import chunk, text_chunks, usage_chunk

WEATHER = {"name": "get_weather", "description": "Weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def request(**body):
    return parse_messages_request({"model": "claude-sonnet-4-5", "max_tokens": 100, **body})


def assemble(pieces, completion, model="claude-x"):
    assembler = MessageAssembler(model=model, input_tokens=10)
    events = assembler.start()
    for piece in pieces:
        events += assembler.on_piece(piece)
    events += assembler.finish(completion)
    return events, fold_events(events)


# -- request -------------------------------------------------------------------------------------------

def test_system_blocks_and_inline_system_messages() -> None:
    req = request(
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=abc;\nYou are terse."},
                {"type": "text", "text": "Be kind."}],
        messages=[{"role": "user", "content": "hi"}, {"role": "system", "content": "Mid-conversation note."},
                  {"role": "assistant", "content": "hello"}, {"role": "user", "content": [
                      {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    )
    body = to_openai_request(req, "up-model")
    assert body["model"] == "up-model" and body["max_tokens"] == 100
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are terse.\n\nBe kind."},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "Mid-conversation note."},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "a\nb"},
    ]
    assert "tools" not in body and "stop" not in body and "temperature" not in body


def test_tools_tool_use_and_tool_results() -> None:
    req = request(
        tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"], temperature=0.3, top_p=0.9, top_k=40,
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no data", "is_error": True},
                {"type": "text", "text": "Thanks"}]},
        ],
    )
    body = to_openai_request(req, "m")
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city.", "parameters": WEATHER["input_schema"]}}]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["stop"] == ["END"] and body["temperature"] == 0.3 and body["top_p"] == 0.9 and body["top_k"] == 40
    user, assistant, first, second, thanks = body["messages"]
    assert user == {"role": "user", "content": "Weather in Paris and Rome?"}
    assert assistant["role"] == "assistant" and assistant["content"] == "Checking."
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in assistant["tool_calls"]] == [("toolu_1", "get_weather", {"city": "Paris"}),
                                                  ("toolu_2", "get_weather", {"city": "Rome"})]
    assert first == {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}
    assert second == {"role": "tool", "tool_call_id": "toolu_2", "content": "[the tool reported an error]\nno data"}
    assert thanks == {"role": "user", "content": "Thanks"}


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice(choice, expected) -> None:
    body = to_openai_request(request(tools=[WEATHER], tool_choice=choice,
                                     messages=[{"role": "user", "content": "hi"}]), "m")
    assert body["tool_choice"] == expected


def test_images_become_image_url_parts() -> None:
    req = request(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}])
    content = to_openai_request(req, "m")["messages"][0]["content"]
    assert content == [{"type": "text", "text": "What is this?"},
                       {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]


# -- response ------------------------------------------------------------------------------------------

def test_text_stream_with_usage_and_cached_tokens() -> None:
    translator = ChunkTranslator()
    pieces = []
    for item in [*text_chunks("Hel", "lo", finish="stop"), usage_chunk(40, 2, cached=32)]:
        pieces += translator.feed(item)
    pieces += translator.finish()
    assert pieces == [TextPiece("Hel"), TextPiece("lo")]
    completion = translator.completion(input_estimate=99)
    assert (completion.stop_reason, completion.input_tokens, completion.output_tokens,
            completion.cached_tokens) == ("end_turn", 40, 2, 32)
    _, message = assemble(pieces, completion)
    assert message["content"] == [{"type": "text", "text": "Hello"}]
    assert message["usage"]["input_tokens"] == 8 and message["usage"]["cache_read_input_tokens"] == 32


def test_streamed_tool_call_argument_deltas_are_reassembled() -> None:
    translator = ChunkTranslator()
    chunks = [
        chunk({"role": "assistant", "content": "Let me check."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Par'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}),
        chunk(finish="tool_calls"),
    ]
    pieces = [piece for item in chunks for piece in translator.feed(item)] + translator.finish()
    assert pieces == [
        TextPiece("Let me check."),
        ToolCallStart("call_a", "get_weather"), ToolCallDelta('{"ci'), ToolCallDelta('ty": "Par'),
        ToolCallDelta('is"}'), ToolCallEnd({"city": "Paris"}),
        ToolCallStart("call_b", "get_weather"), ToolCallDelta('{"city": "Rome"}'), ToolCallEnd({"city": "Rome"}),
    ]
    completion = translator.completion(input_estimate=12)
    assert completion.stop_reason == "tool_use" and completion.input_tokens == 12  # no usage: the estimate
    events, message = assemble(pieces, completion)
    deltas = [data["delta"]["partial_json"] for kind, data in events
              if kind == "content_block_delta" and data["delta"]["type"] == "input_json_delta"]
    assert deltas == ['{"ci', 'ty": "Par', 'is"}', '{"city": "Rome"}']
    assert [block["type"] for block in message["content"]] == ["text", "tool_use", "tool_use"]
    assert message["content"][1] == {"type": "tool_use", "id": "call_a", "name": "get_weather",
                                     "input": {"city": "Paris"}}
    assert message["content"][2]["input"] == {"city": "Rome"} and message["stop_reason"] == "tool_use"


def test_arguments_before_the_name_and_missing_ids() -> None:
    translator = ChunkTranslator()
    pieces = translator.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]}))
    assert pieces == []
    pieces += translator.feed(chunk({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}))
    pieces += translator.finish()
    start, delta, end = pieces
    assert isinstance(start, ToolCallStart) and start.id.startswith("toolu_") and start.name == "f"
    assert delta == ToolCallDelta('{"a": 1}') and end == ToolCallEnd({"a": 1})


@pytest.mark.parametrize(("finish", "stop_reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal"),
    (None, "end_turn"),
])
def test_finish_reasons(finish, stop_reason) -> None:
    translator = ChunkTranslator()
    translator.feed(chunk({"content": "x"}, finish=finish))
    assert translator.completion(1).stop_reason == stop_reason


def test_vllm_stop_reason_names_the_stop_sequence() -> None:
    translator = ChunkTranslator(stop_sequences=("END",))
    translator.feed(chunk({"content": "x"}, finish="stop", stop_reason="END"))
    completion = translator.completion(1)
    assert completion.stop_reason == "stop_sequence" and completion.stop_sequence == "END"


def test_whole_response_goes_through_the_same_translator() -> None:
    response = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5}}
    translator = ChunkTranslator()
    pieces = translator.feed(response_as_chunk(response)) + translator.finish()
    _, message = assemble(pieces, translator.completion(1))
    assert message["content"][0]["input"] == {"city": "Oslo"} and message["usage"]["output_tokens"] == 5


def test_error_inside_the_stream_raises() -> None:
    with pytest.raises(InternalError, match="out of memory"):
        ChunkTranslator().feed({"error": {"message": "out of memory"}})


# -- plumbing --------------------------------------------------------------------------------------------

def test_sse_parsing_handles_crlf_comments_and_multiline_data() -> None:
    lines = [": keepalive", "event: message_start", 'data: {"a":', "data: 1}", "", "data: [DONE]", ""]
    assert list(sse_events(iter(lines))) == [("message_start", '{"a":\n1}'), ("message", "[DONE]")]


def test_urls() -> None:
    assert base_url("http://localhost:11434/v1/") == "http://localhost:11434"
    assert display_url("https://user:pw@example.com:8443/v1?key=x") == "https://example.com:8443"


@pytest.mark.parametrize(("code", "body", "error_type", "status", "words"), [
    (401, {"detail": "Invalid API key"}, "api_error", 500, "rejected the API key"),
    (403, "forbidden", "api_error", 500, "rejected the API key"),
    (429, {"error": {"message": "slow down"}}, "overloaded_error", 529, "slow down"),
    (503, {"error": "loading model"}, "overloaded_error", 529, "loading model"),
    (404, {"error": {"message": "model 'x' not found"}}, "not_found_error", 404, "model 'x' not found"),
    (400, {"error": {"message": "This model's maximum context length is 4096 tokens. However, you requested "
                                "5000 tokens (4000 in the messages, 1000 in the completion)."}},
     "invalid_request_error", 400, "prompt is too long: 5000 tokens > 4096 maximum"),
    (500, "boom", "api_error", 500, "failed (HTTP 500): boom"),
])
def test_upstream_statuses(code, body, error_type, status, words) -> None:
    error = from_status(code, body if isinstance(body, str) else json.dumps(body), "http://up", "/v1/x")
    assert (error.error_type, error.status) == (error_type, status) and words in error.message


def test_estimate_counts_everything_sent() -> None:
    short = estimate_tokens(request(messages=[{"role": "user", "content": "hi"}]))
    with_tools = estimate_tokens(request(tools=[WEATHER], messages=[{"role": "user", "content": "hi"}]))
    assert 4 < short < 10 and with_tools > short + 20


def test_passthrough_keeps_the_body_and_relays_events() -> None:
    raw = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
           "cache_control": {"type": "ephemeral"}}
    body = passthrough.forward_body(raw, None, [])
    assert body == {**raw, "stream": True}
    relay = passthrough.Relay("claude-x")
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "up", "content": [
        {"type": "text", "text": "hey"}, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 4}}
    events = [event for event in relay.on_event("message", message)]
    folded = fold_events(events)
    assert folded["model"] == "claude-x" and folded["content"] == message["content"]
    assert folded["stop_reason"] == "tool_use" and relay.finished
    assert list(relay.on_event("ping", {"type": "ping"})) == []
    with pytest.raises(Exception, match="overloaded") as caught:
        list(relay.on_event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                  "message": "overloaded"}}))
    assert caught.value.error_type == "overloaded_error"
