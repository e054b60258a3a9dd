"""``upstream_api = "anthropic"``: Pensieve forwarding /v1/messages to another Anthropic-speaking server
(here a second Pensieve with a scripted model), touching only the model name, auth and fitting."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from pensieve_server.engine.scripted import ScriptedBackend
from tests.serverutil import running_server
from tests.upstream.conftest import pensieve_in_front, sdk

WEATHER = {"name": "get_weather", "description": "Current weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
HELLO = [{"role": "user", "content": "Say hello"}]


def test_text_tools_streaming_and_counting_pass_through() -> None:
    scripted = ScriptedBackend()
    scripted.enqueue("Hello from the upstream.")
    scripted.enqueue("Streaming hello.")
    scripted.enqueue('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    with running_server({"inner-model": scripted}) as inner, \
            pensieve_in_front(inner.base_url, upstream_api="anthropic", upstream_api_key=inner.token,
                              upstream_model="inner-model") as server:
        client = sdk(server)
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=HELLO)
        assert message.content[0].text == "Hello from the upstream."
        assert message.model == "claude-sonnet-4-5" and message.stop_reason == "end_turn"
        assert message.usage.input_tokens > 0

        with client.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=HELLO) as events:
            assert "".join(events.text_stream) == "Streaming hello."

        called = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, tools=[WEATHER], messages=HELLO)
        assert called.stop_reason == "tool_use" and called.content[0].input == {"city": "Oslo"}

        counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=HELLO)
        direct = sdk(inner).messages.count_tokens(model="inner-model", messages=HELLO)
        assert counted.input_tokens == direct.input_tokens  # the upstream's own count

        health = httpx.get(f"{server.base_url}/health").json()
        assert health["engine"] == "upstream" and "anthropic API" in health["device"]
    assert "Say hello" in scripted.prompts[0]


def test_wrong_key_and_upstream_errors() -> None:
    scripted = ScriptedBackend()
    with running_server({"inner-model": scripted}) as inner:
        with pensieve_in_front(inner.base_url, upstream_api="anthropic", upstream_api_key="wrong",
                               upstream_model="inner-model") as server, \
                pytest.raises(anthropic.InternalServerError, match="rejected the API key"):
            sdk(server).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=HELLO)
        with pensieve_in_front(inner.base_url, upstream_api="anthropic", upstream_api_key=inner.token,
                               upstream_model="no-such-model") as server, \
                pytest.raises(anthropic.NotFoundError, match="no-such-model"):
            sdk(server).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=HELLO)


def test_fitting_applies_when_a_context_length_is_set() -> None:
    scripted = ScriptedBackend()
    scripted.enqueue("fitted")
    with running_server({"inner-model": scripted}) as inner, \
            pensieve_in_front(inner.base_url, upstream_api="anthropic", upstream_api_key=inner.token,
                              upstream_model="inner-model", upstream_context_length=2048) as server, \
            server.client() as http:
        response = http.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 9000,
                                                   "system": "Rules. " * 4000, "messages": HELLO})
    assert response.status_code == 200, response.text
    assert "trimmed" in response.headers["pensieve-context-fit"]
    assert response.json()["content"][0]["text"] == "fitted"
    assert len(scripted.prompts[0]) < 4 * 2048 * 2
