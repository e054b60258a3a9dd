"""count_tokens reports what the model reads: the fitted prompt, equal to usage.input_tokens."""

from __future__ import annotations

import anthropic

from pensieve_server.engine.scripted import ScriptedBackend
from tests.serverutil import running_server


def _long_conversation(turns: int) -> list[dict]:
    messages: list[dict] = [{"role": "user", "content": "Fix the failing test."}]
    for i in range(turns):
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Step {i}."},
            {"type": "tool_use", "id": f"toolu_{i:04d}", "name": "Bash", "input": {"command": f"ls {i}"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i:04d}", "content": f"out {i} " + "x" * 300}]})
    messages.append({"role": "assistant", "content": "Done?"})
    messages.append({"role": "user", "content": "Go on."})
    return messages


BASH = {"name": "Bash", "description": "Run a command.", "input_schema": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}


def test_count_tokens_equals_usage_after_fitting() -> None:
    scripted = ScriptedBackend(context_length=4000)
    request = {"model": "scripted", "messages": _long_conversation(30), "tools": [BASH]}
    with running_server({"scripted": scripted}) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0)
        counted = client.messages.count_tokens(**request).input_tokens
        scripted.enqueue("ok")
        response = client.messages.with_raw_response.create(max_tokens=3000, **request)
    message = response.parse()
    assert "dropped" in response.headers["pensieve-context-fit"]  # the conversation really was fitted
    assert counted == message.usage.input_tokens
    assert counted < 4000
    assert len(scripted.prompts[-1]) == counted  # the scripted tokenizer: one token per character
