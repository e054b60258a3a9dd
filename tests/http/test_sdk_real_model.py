"""The official ``anthropic`` SDK against the real server running the real embedded model (llama.cpp).

The conformance tests beside this file use a scripted engine to pin exact outputs; this one proves
the same client calls work end to end on real inference: answers, streaming, usage that adds up,
``count_tokens`` equal to what generation saw, prefix-cache reuse, model names and stop reasons.
Answers are held against raw llama-cpp-python's own greedy answer to the same prompt tokens, never
against words (the model's words differ between CPUs).
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from tests.raw_reference import assert_greedy_path, raw_llamacpp
from tests.serverutil import RunningServer, embedded_llamacpp_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = "You are a helpful assistant."
# The prompt the server renders for SYSTEM and QUESTION with the model's own chat template.
PROMPT = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION[0]['content']}<|im_end|>\n"
          "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    # No repeat penalty: the answers are compared with raw greedy decoding.
    with embedded_llamacpp_server(tmp_path_factory.mktemp("pensieve-home"), repeat_penalty=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer):
    return anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0, timeout=120)


def prompt_tokens(usage) -> int:
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_create_answers_and_usage_matches_count_tokens(client) -> None:
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=40, system=SYSTEM, messages=QUESTION)
    text = "".join(block.text for block in message.content if block.type == "text")
    raw = raw_llamacpp()
    prompt = raw.vocab.tokenize(PROMPT)
    assert_greedy_path(raw, prompt, text, message.stop_reason)  # raw llama.cpp's own answer
    assert message.stop_reason in ("end_turn", "max_tokens") and message.role == "assistant"
    assert message.model == "claude-sonnet-4-5"  # the name the client asked for comes back
    counted = client.messages.count_tokens(model="claude-sonnet-4-5", system=SYSTEM, messages=QUESTION)
    assert prompt_tokens(message.usage) == counted.input_tokens == len(prompt)
    assert 0 < message.usage.output_tokens <= 40
    assert (message.usage.output_tokens == 40) == (message.stop_reason == "max_tokens")


def test_stream_text_equals_final_message(client) -> None:
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=40, system=SYSTEM, messages=QUESTION) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == "".join(b.text for b in final.content if b.type == "text")
    raw = raw_llamacpp()
    assert_greedy_path(raw, raw.vocab.tokenize(PROMPT), streamed, final.stop_reason)


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
    # Both requests below find the prompt cached by the one above and so decode alike (greedy, same layout).
    text = client.messages.create(model="claude-sonnet-4-5", max_tokens=60, messages=story).content[0].text
    words = text.split()
    word = words[len(words) // 2]  # a word this run's answer contains, from its middle
    stopped = client.messages.create(model="claude-sonnet-4-5", max_tokens=60, messages=story, stop_sequences=[word])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert "".join(block.text for block in stopped.content) == text[: text.index(word)]


def test_models_and_errors(client) -> None:
    assert "smollm2-135m" in [m.id for m in client.models.list().data]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-local-model", max_tokens=5, messages=QUESTION)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[])
