"""Pensieve in front of a scripted OpenAI-compatible server: exact tool calls, refusals, silence, crashes."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import pytest

from tests.upstream.conftest import free_port, pensieve_in_front, sdk
from tests.upstream.fakes import chunk, fake_openai, sleep, status, stream, text_chunks, usage_chunk

WEATHER = {"name": "get_weather", "description": "Current weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TOOL_CALL = [
    chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": \"Paris\"}"}}]}),
    chunk(finish="tool_calls"),
    usage_chunk(120, 9, cached=64),
]
HELLO = {"role": "user", "content": "Say hello"}


def sse_frames(response: httpx.Response) -> list[tuple[str, dict]]:
    frames = []
    for block in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            frames.append((lines["event"], json.loads(lines["data"])))
    return frames


def test_tool_round_trip_with_streamed_arguments() -> None:
    with fake_openai(stream(TOOL_CALL), stream(text_chunks("It is 18°C in Paris."))) as fake, \
            pensieve_in_front(fake.url, upstream_model="fake-model") as server:
        client = sdk(server)
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=200, tools=[WEATHER],
                                    tool_choice={"type": "auto"},
                                    messages=[{"role": "user", "content": "Weather in Paris?"}]) as events:
            kinds = [event.type for event in events]
            first = events.get_final_message()
        assert "input_json" in kinds  # the arguments arrived as deltas
        assert first.stop_reason == "tool_use"
        (call,) = first.content
        assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
        assert first.usage.input_tokens == 56 and first.usage.cache_read_input_tokens == 64
        assert first.usage.output_tokens == 9

        second = client.messages.create(model="claude-sonnet-4-5", max_tokens=200, tools=[WEATHER], messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18°C, sunny"}]},
        ])
        assert second.content[0].text == "It is 18°C in Paris." and second.stop_reason == "end_turn"

    sent_first, sent_second = fake.chat_bodies()
    assert sent_first["model"] == "fake-model" and sent_first["stream"] is True
    assert sent_first["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert sent_first["tool_choice"] == "auto"
    assistant, tool = sent_second["messages"][1:]
    assert assistant["tool_calls"][0]["id"] == call.id
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert tool == {"role": "tool", "tool_call_id": call.id, "content": "18°C, sunny"}


def test_key_is_sent_as_bearer_and_models_are_mapped() -> None:
    with fake_openai(stream(text_chunks("hi"))) as fake, \
            pensieve_in_front(fake.url, upstream_api_key="sk-up", upstream_model="fake-model",
                              tiers={"haiku": "small-model"}) as server:
        client = sdk(server)
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[HELLO])
        client.messages.create(model="claude-opus-4-1", max_tokens=5, messages=[HELLO])
        client.messages.create(model="qwen3:32b", max_tokens=5, messages=[HELLO])  # any other name goes as is
        listed = httpx.get(f"{server.base_url}/v1/models", headers={"x-api-key": server.token}).json()
    assert [body["model"] for body in fake.chat_bodies()] == ["small-model", "fake-model", "qwen3:32b"]
    assert all(r.headers.get("authorization") == "Bearer sk-up" for r in fake.requests)
    assert {m["id"] for m in listed["data"]} == {"fake-model", "small-model"}


def test_model_is_discovered_when_not_configured() -> None:
    with fake_openai(stream(text_chunks("hi")), models=["first-one", "second"]) as fake, \
            pensieve_in_front(fake.url) as server:
        sdk(server).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[HELLO])
    assert fake.chat_bodies()[0]["model"] == "first-one"


def test_plain_json_answer_and_no_usage() -> None:
    answer = status(200, {"choices": [{"index": 0, "finish_reason": "length",
                                       "message": {"role": "assistant", "content": "Hello there"}}]})
    with fake_openai(answer) as fake, pensieve_in_front(fake.url, upstream_model="m") as server:
        message = sdk(server).messages.create(model="claude-sonnet-4-5", max_tokens=3, messages=[HELLO])
    assert message.content[0].text == "Hello there" and message.stop_reason == "max_tokens"
    assert message.usage.input_tokens > 0  # the documented estimate


@pytest.mark.parametrize(("behaviour", "status_code", "error_type", "words"), [
    (status(429, {"error": {"message": "too many requests"}}), 529, "overloaded_error", "too many requests"),
    (status(503, {"error": "model is loading"}), 529, "overloaded_error", "model is loading"),
    (status(401, {"error": {"message": "bad key"}}), 500, "api_error", "rejected the API key"),
    (status(404, {"error": {"message": "model 'm' not found"}}), 404, "not_found_error", "model 'm' not found"),
    (status(400, {"error": {"message": "Requested tokens (9000) exceed context window of 4096"}}), 400,
     "invalid_request_error", "prompt is too long: 9000 tokens > 4096 maximum"),
])
def test_upstream_refusals_are_anthropic_errors(behaviour, status_code, error_type, words) -> None:
    with fake_openai(behaviour) as fake, pensieve_in_front(fake.url, upstream_model="m") as server, \
            server.client() as http:
        for streamed in (False, True):
            response = http.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 5,
                                                       "messages": [HELLO], "stream": streamed})
            assert response.status_code == status_code, response.text
            error = response.json()["error"]
            assert error["type"] == error_type and words in error["message"]
        if status_code == 529:
            assert response.headers["retry-after"]


def test_unreachable_upstream_is_a_clear_api_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pensieve_in_front(url, upstream_model="m") as server:
        with pytest.raises(anthropic.InternalServerError) as caught:
            sdk(server).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[HELLO])
        assert f"upstream at {url[:-3]} is unreachable" in caught.value.message
        assert caught.value.body["error"]["type"] == "api_error"
        assert sdk(server).messages.count_tokens(model="claude-sonnet-4-5", messages=[HELLO]).input_tokens > 0
        assert httpx.get(f"{server.base_url}/health").json()["engine"] == "upstream"


def test_silent_upstream_times_out_with_a_clear_message() -> None:
    with fake_openai(sleep(3)) as fake, \
            pensieve_in_front(fake.url, upstream_model="m", upstream_timeout=0.5) as server, \
            pytest.raises(anthropic.InternalServerError, match=r"sent nothing for 0.5 s") as caught:
        sdk(server).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[HELLO])
    assert caught.value.status_code == 504 and caught.value.body["error"]["type"] == "timeout_error"


def test_upstream_stalling_mid_stream_ends_in_an_error_event() -> None:
    script = stream(text_chunks("one ", "two ", "three"), stall_after=2, stall=3)
    with fake_openai(script) as fake, pensieve_in_front(fake.url, upstream_model="m", upstream_timeout=0.5) as server, \
            server.client() as http:
        response = http.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 50,
                                                   "messages": [HELLO], "stream": True})
    frames = sse_frames(response)
    assert frames[0][0] == "message_start" and frames[-1][0] == "error"
    assert "sent nothing for 0.5 s" in frames[-1][1]["error"]["message"]


def test_upstream_dying_mid_stream_gives_an_error_event_and_pensieve_stays_up() -> None:
    chunks = text_chunks(*[f"word{i} " for i in range(20)])
    with fake_openai(stream(chunks, drop_after=5), stream(text_chunks("fine again"))) as fake, \
            pensieve_in_front(fake.url, upstream_model="m") as server:
        client = sdk(server)
        texts = []
        with pytest.raises(anthropic.APIStatusError) as caught, \
                client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=[HELLO]) as events:
            for text in events.text_stream:
                texts.append(text)
        assert texts and "word0" in "".join(texts)
        assert "closed the connection before the answer was complete" in str(caught.value)
        assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"
        again = client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[HELLO])
        assert again.content[0].text == "fine again"
        assert httpx.get(f"{server.base_url}/health").json()["queue_depth"] == 0


def test_stream_ending_without_finish_is_an_error() -> None:
    with fake_openai(stream(text_chunks("half")[:-1], done=False)) as fake, \
            pensieve_in_front(fake.url, upstream_model="m") as server, \
            pytest.raises(anthropic.InternalServerError, match="before the answer was complete"):
        sdk(server).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[HELLO])


def test_context_fitting_when_a_context_length_is_configured() -> None:
    long_system = "Rules. " * 4000  # ≈28k characters: far more than 2048 tokens
    with fake_openai(stream(text_chunks("ok", finish="length"))) as fake, \
            pensieve_in_front(fake.url, upstream_model="m", upstream_context_length=2048) as server, \
            server.client() as http:
        response = http.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 4000,
                                                   "system": long_system, "messages": [HELLO]})
    assert response.status_code == 200, response.text
    assert "trimmed" in response.headers["pensieve-context-fit"]
    sent = fake.chat_bodies()[0]
    assert len(sent["messages"][0]["content"]) < len(long_system) / 4
    assert sent["max_tokens"] < 2048
    assert response.json()["stop_reason"] == "model_context_window_exceeded"


def test_client_going_away_stops_the_upstream_request() -> None:
    chunks = text_chunks(*[f"w{i} " for i in range(400)])
    with fake_openai(stream(chunks, delay=0.02)) as fake, pensieve_in_front(fake.url, upstream_model="m") as server:
        with server.client() as http, http.stream("POST", "/v1/messages", json={
                "model": "claude-sonnet-4-5", "max_tokens": 500, "messages": [HELLO], "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("event: content_block_delta"):
                    break  # hang up mid-answer
        deadline = time.monotonic() + 5
        while httpx.get(f"{server.base_url}/health").json()["queue_depth"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{server.base_url}/health").json()["queue_depth"] == 0  # the upstream read ended


def test_pings_while_the_upstream_sends_nothing_to_show() -> None:
    thinking = [chunk({"reasoning_content": "hmm "}) for _ in range(8)]
    with fake_openai(stream([*thinking, *text_chunks("Done.")], delay=0.1)) as fake, \
            pensieve_in_front(fake.url, upstream_model="m", ping_interval=0.25) as server, server.client() as http:
        response = http.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 50,
                                                   "messages": [HELLO], "stream": True})
    kinds = [kind for kind, _ in sse_frames(response)]
    assert "ping" in kinds and kinds[-1] == "message_stop"
    assert kinds.index("ping") < kinds.index("content_block_start")
