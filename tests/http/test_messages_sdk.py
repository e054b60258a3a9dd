"""Conformance with the official anthropic SDK against the real server and a scripted model."""

from __future__ import annotations

import anthropic
import pytest

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_create_returns_scripted_text_and_exact_usage(client, scripted):
    scripted.enqueue("Paris is the capital.")
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "Capital of France?"}]
    )
    assert message.model == "claude-sonnet-4-5"
    assert message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Paris is the capital."
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == len("Paris is the capital.")
    assert message.usage.input_tokens == len(scripted.prompts[-1])
    assert message.id.startswith("msg_")


def test_stream_accumulates_same_message(client, scripted):
    scripted.enqueue("Streaming works.")
    with client.messages.stream(
        model="claude-3-5-haiku-latest", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Streaming works."
    assert final.content[0].text == "Streaming works."
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len("Streaming works.")


def test_max_tokens_stop_reason(client, scripted):
    scripted.enqueue("abcdefghijklmnopqrstuvwxyz")
    message = client.messages.create(model="scripted", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert message.content[0].text == "abcde"
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5


def test_stop_sequence(client, scripted):
    scripted.enqueue("one two STOP three")
    message = client.messages.create(
        model="scripted", max_tokens=50, stop_sequences=["STOP"], messages=[{"role": "user", "content": "x"}]
    )
    assert message.content[0].text == "one two "
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "STOP"


def test_tool_call_becomes_tool_use_block(client, scripted):
    scripted.enqueue('Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    message = client.messages.create(
        model="claude-opus-4-8",
        max_tokens=200,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert message.stop_reason == "tool_use"
    kinds = [block.type for block in message.content]
    assert kinds == ["text", "tool_use"]
    tool_use = message.content[1]
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Paris"}
    assert tool_use.id.startswith("toolu_")


def test_tool_call_streams_input_json(client, scripted):
    scripted.enqueue('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    with client.messages.stream(
        model="scripted", max_tokens=200, tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "Oslo?"}]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert any(e.type == "input_json" for e in events)
    assert final.content[-1].type == "tool_use"
    assert final.content[-1].input == {"city": "Oslo"}
    assert final.stop_reason == "tool_use"


def test_tool_result_reaches_the_model(client, scripted):
    scripted.enqueue("It is sunny.")
    client.messages.create(
        model="scripted",
        max_tokens=50,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 24C"}]},
        ],
    )
    assert "sunny, 24C" in scripted.prompts[-1]
    assert "get_weather" in scripted.prompts[-1]


def test_count_tokens_matches_generation_input(client, scripted):
    request = {"model": "scripted", "messages": [{"role": "user", "content": "count me"}],
               "system": "be brief", "tools": [WEATHER_TOOL]}
    counted = client.messages.count_tokens(**request)
    scripted.enqueue("ok")
    message = client.messages.create(max_tokens=10, **request)
    assert counted.input_tokens == message.usage.input_tokens


def test_models_list_and_retrieve(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "scripted" in ids
    assert client.models.retrieve("scripted").id == "scripted"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("no-such-model")


def test_unknown_model_is_not_found_listing_models(client):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="gpt-4", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert "scripted" in info.value.message


def test_wrong_token_is_authentication_error(server):
    bad = anthropic.Anthropic(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="scripted", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_bearer_token_is_accepted(server, scripted):
    bearer = anthropic.Anthropic(base_url=server.base_url, auth_token=server.token, max_retries=0)
    scripted.enqueue("hi")
    assert bearer.messages.create(
        model="scripted", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    ).content[0].text == "hi"


def test_invalid_request_is_bad_request_error(client):
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="scripted", max_tokens=0, messages=[{"role": "user", "content": "x"}])


def test_context_window_cut_is_model_context_window_exceeded_not_max_tokens():
    """When the context, not the client's max_tokens, ends the answer, say so the way Anthropic does."""
    from pensieve_server.engine.scripted import ScriptedBackend
    from tests.serverutil import running_server

    small = ScriptedBackend(context_length=120)
    small.enqueue("z" * 500)
    with running_server({"small": small}, context_policy="fit") as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0)
        message = client.messages.create(model="small", max_tokens=16000, messages=[{"role": "user", "content": "x"}])
    prompt_tokens = len(small.prompts[-1])
    assert message.stop_reason == "model_context_window_exceeded"
    assert message.usage.output_tokens == 120 - prompt_tokens


def test_sampling_settings_reach_the_engine(server, client, scripted):
    scripted.enqueue("ok")
    client.messages.create(model="scripted", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    params = scripted.params[-1]
    assert params.repeat_penalty == server.settings.repeat_penalty == 1.1
    assert params.temperature == server.settings.temperature
