"""The official ``anthropic`` SDK against the real server running the real embedded model (llama.cpp).

The conformance tests beside this file use a scripted engine to pin exact outputs; this one proves
the same client calls work end to end on real inference: answers, streaming, usage that adds up,
``count_tokens`` equal to what generation saw, prefix-cache reuse, model names and stop reasons.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serverutil import RunningServer, embedded_llamacpp_server

anthropic = pytest.importorskip("anthropic")
pytest.importorskip("llama_cpp")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    with embedded_llamacpp_server(tmp_path_factory.mktemp("pensieve-home")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer):
    return anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0, timeout=120)


def prompt_tokens(usage) -> int:
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_create_answers_and_usage_matches_count_tokens(client) -> None:
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=40, system=SYSTEM, messages=QUESTION)
    text = "".join(block.text for block in message.content if block.type == "text")
    assert "Paris" in text
    assert message.stop_reason == "end_turn" and message.role == "assistant"
    assert message.model == "claude-sonnet-4-5"  # the name the client asked for comes back
    counted = client.messages.count_tokens(model="claude-sonnet-4-5", system=SYSTEM, messages=QUESTION)
    assert prompt_tokens(message.usage) == counted.input_tokens
    assert 0 < message.usage.output_tokens < 40


def test_stream_text_equals_final_message(client) -> None:
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=40, system=SYSTEM, messages=QUESTION) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == "".join(b.text for b in final.content if b.type == "text")
    assert "Paris" in streamed and final.stop_reason == "end_turn"


def test_second_turn_reads_the_prefix_cache(client) -> None:
    system = SYSTEM + " Answer in one sentence."
    first = client.messages.create(model="claude-opus-4-1", max_tokens=20, system=system, messages=QUESTION)
    second = client.messages.create(model="claude-opus-4-1", max_tokens=20, system=system, messages=[
        *QUESTION, {"role": "assistant", "content": first.content[0].text},
        {"role": "user", "content": "And of Italy?"}])
    assert second.usage.cache_read_input_tokens >= prompt_tokens(first.usage) - 2
    assert second.usage.input_tokens < prompt_tokens(second.usage) // 2


def test_max_tokens_and_stop_sequence(client) -> None:
    story = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
    cut = client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=story)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 5
    text = client.messages.create(model="claude-sonnet-4-5", max_tokens=60, messages=story).content[0].text
    word = text.split()[3]  # greedy: the same request again produces the same text up to this word
    stopped = client.messages.create(model="claude-sonnet-4-5", max_tokens=60, messages=story, stop_sequences=[word])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert word not in stopped.content[0].text if stopped.content else True


def test_models_and_errors(client) -> None:
    assert "smollm2-135m" in [m.id for m in client.models.list().data]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-local-model", max_tokens=5, messages=QUESTION)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[])
