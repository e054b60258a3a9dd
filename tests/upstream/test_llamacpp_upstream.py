"""Pensieve in front of a real ``python -m llama_cpp.server`` subprocess, through the anthropic SDK."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import pytest

from pensieve_cli.doctor import upstream
from pensieve_cli.doctor.checklist import UPSTREAM_CHECKS, checks_for
from pensieve_cli.doctor.context import Context
from pensieve_server.settings import load_settings
from tests.upstream.conftest import MODEL_ALIAS, Upstream, llamacpp_server, pensieve_in_front, sdk

pytestmark = pytest.mark.slow
SAY_HI = [{"role": "user", "content": "Say hi"}]
GREEDY = {"temperature": 0.0}  # this SDK version has no temperature argument


def test_text_non_streaming_and_streaming(llamacpp_upstream: Upstream) -> None:
    with pensieve_in_front(llamacpp_upstream.url, upstream_api_key=llamacpp_upstream.api_key) as server:
        client = sdk(server)
        # The upstream caches this prompt now; the two answers compared below then both reuse it and are
        # decoded alike (a fresh prompt is evaluated in another layout, which may flip a near-tie).
        client.messages.create(model="claude-sonnet-4-5", max_tokens=1, messages=SAY_HI, extra_body=GREEDY)
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=12, messages=SAY_HI,
                                         extra_body=GREEDY)
        assert message.model == "claude-sonnet-4-5" and message.role == "assistant"
        assert message.content[0].type == "text" and message.content[0].text.strip()
        assert message.stop_reason in ("end_turn", "max_tokens") and 0 < message.usage.output_tokens <= 12

        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=12, messages=SAY_HI,
                                    extra_body=GREEDY) as events:
            pieces = list(events.text_stream)
            final = events.get_final_message()
        assert len(pieces) > 1 and "".join(pieces) == final.content[0].text
        assert final.content[0].text == message.content[0].text  # greedy, same layout: same answer both ways

        counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=SAY_HI)
        assert 2 <= counted.input_tokens < 20  # llama-cpp-python's /extras/tokenize/count, plus overhead

        health = httpx.get(f"{server.base_url}/health").json()
        assert health["engine"] == "upstream" and health["model"] == "upstream"
        assert llamacpp_upstream.url in health["device"]
        models = httpx.get(f"{server.base_url}/v1/models", headers={"x-api-key": server.token}).json()
        assert [m["id"] for m in models["data"]] == ["upstream"]


def test_stop_sequences_and_system_prompt_reach_the_upstream(llamacpp_upstream: Upstream) -> None:
    with pensieve_in_front(llamacpp_upstream.url, upstream_api_key=llamacpp_upstream.api_key,
                           upstream_model=MODEL_ALIAS) as server:
        message = sdk(server).messages.create(
            model=MODEL_ALIAS, max_tokens=40, extra_body=GREEDY, stop_sequences=["."],
            system="Answer in one sentence.", messages=[{"role": "user", "content": "What is the sun?"}])
    assert "." not in message.content[0].text
    assert message.stop_reason in ("end_turn", "stop_sequence", "max_tokens")


def test_wrong_key_is_an_api_error_naming_the_upstream(llamacpp_upstream: Upstream) -> None:
    with pensieve_in_front(llamacpp_upstream.url, upstream_api_key="not-the-key") as server, \
            server.client() as http:
        for streamed in (False, True):
            response = http.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 5,
                                                       "messages": SAY_HI, "stream": streamed})
            assert response.status_code == 500
            error = response.json()["error"]
            assert error["type"] == "api_error" and "rejected the API key" in error["message"]
            assert "not-the-key" not in response.text


def test_doctor_sees_the_upstream(llamacpp_upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSIEVE_ENGINE", "upstream")
    monkeypatch.setenv("PENSIEVE_UPSTREAM_URL", llamacpp_upstream.url + "/v1")
    monkeypatch.setenv("PENSIEVE_UPSTREAM_API_KEY", llamacpp_upstream.api_key)
    monkeypatch.setenv("PENSIEVE_UPSTREAM_MODEL", MODEL_ALIAS)
    ctx = Context(load_settings(), {}, health=None)
    assert checks_for(ctx.settings) == UPSTREAM_CHECKS
    result = upstream.check_upstream(ctx)
    assert (result.name, result.status) == ("upstream", "ok"), result
    assert MODEL_ALIAS in result.detail and result.data["models"] == [MODEL_ALIAS]
    assert llamacpp_upstream.api_key not in result.detail
    assert upstream.check_engine(ctx).status == "ok"

    monkeypatch.setenv("PENSIEVE_UPSTREAM_API_KEY", "wrong")
    result = upstream.check_upstream(Context(load_settings(), {}, health=None))
    assert result.status == "fail" and "rejected the API key" in result.detail and "upstream_api_key" in result.fix


def test_upstream_killed_mid_stream(tmp_path) -> None:
    """A real upstream process dies while answering: the client gets an error event, Pensieve lives on."""
    with llamacpp_server(tmp_path, api_key="") as upstream, pensieve_in_front(upstream.url) as server, \
            server.client() as http:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 2000, "stream": True,
                "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}
        frames: list[str] = []
        with http.stream("POST", "/v1/messages", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                frames.append(line)
                if line.startswith("event: content_block_delta") and upstream.process.poll() is None:
                    time.sleep(0.2)
                    upstream.kill()
        events = [line.split(": ", 1)[1] for line in frames if line.startswith("event: ")]
        assert "content_block_delta" in events and events[-1] == "error", events[-5:]
        error = json.loads(next(line for line in reversed(frames) if line.startswith("data: "))[6:])
        assert error["error"]["type"] == "api_error" and "upstream" in error["error"]["message"]
        assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"
        with pytest.raises(anthropic.InternalServerError, match="unreachable"):
            sdk(server).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=SAY_HI)
