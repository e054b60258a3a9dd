"""A tool round trip through Pensieve to a real ``python -m llama_cpp.server``, through the anthropic SDK.

SmolLM2-135M does not call tools by itself, so the upstream runs with ``--chat_format
chatml-function-calling`` and the request forces the tool: Anthropic ``tool_choice: {"type": "tool"}``
becomes OpenAI's named ``tool_choice``, for which llama-cpp-python constrains the output to the tool's
JSON schema with a grammar. What the test proves is Pensieve's part: the forced choice reaches the
upstream in a form it acts on, the upstream's streamed tool call comes back as a ``tool_use`` block
(whole, and as ``input_json_delta`` events), and the ``tool_result`` goes back upstream as a ``tool``
message that the upstream accepts. (llama-cpp-python's chatml-function-calling template leaves ``tool``
messages out of the prompt, so the model's second answer does not depend on the result.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.upstream.conftest import Upstream, llamacpp_server, pensieve_in_front, sdk

pytestmark = pytest.mark.slow
GREEDY = {"temperature": 0.0}
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    # maxLength keeps the grammar-constrained string short: a tiny model may otherwise never close it.
    "input_schema": {"type": "object", "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 24}},
                     "required": ["city"], "additionalProperties": False},
}
FORCED = {"type": "tool", "name": "get_weather"}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


@pytest.fixture(scope="module")
def function_calling_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A llama.cpp upstream whose chat handler does tool calls (the default GGUF template does not)."""
    with llamacpp_server(tmp_path_factory.mktemp("tools-upstream"), api_key="",
                         extra_args=("--chat_format", "chatml-function-calling")) as upstream:
        yield upstream


def _check_call(name: str, arguments: Any) -> None:
    assert name == "get_weather"
    assert isinstance(arguments, dict) and set(arguments) == {"city"}, arguments
    assert isinstance(arguments["city"], str) and 1 <= len(arguments["city"]) <= 24


def _follow_up(call_id: str, call_input: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        QUESTION,
        {"role": "assistant", "content": [{"type": "tool_use", "id": call_id, "name": "get_weather",
                                           "input": call_input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                      "content": "Sunny, 21 degrees Celsius."}]},
    ]


def test_forced_tool_call_and_tool_result_round_trip(function_calling_upstream: Upstream) -> None:
    with pensieve_in_front(function_calling_upstream.url) as server:
        client = sdk(server)
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=60, tools=[WEATHER],
                                         tool_choice=FORCED, messages=[QUESTION], extra_body=GREEDY)
        assert message.stop_reason == "tool_use", message
        calls = [block for block in message.content if block.type == "tool_use"]
        assert len(calls) == 1, message.content
        _check_call(calls[0].name, calls[0].input)
        assert calls[0].id

        answer = client.messages.create(model="claude-sonnet-4-5", max_tokens=16, tools=[WEATHER],
                                        messages=_follow_up(calls[0].id, calls[0].input), extra_body=GREEDY)
        assert answer.stop_reason in ("end_turn", "max_tokens"), answer
        assert [block.type for block in answer.content] == ["text"] and answer.content[0].text.strip()


def test_forced_tool_call_streamed(function_calling_upstream: Upstream) -> None:
    with pensieve_in_front(function_calling_upstream.url) as server:
        client = sdk(server)
        partials: list[str] = []
        kinds: list[str] = []
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=60, tools=[WEATHER], tool_choice=FORCED,
                                    messages=[QUESTION], extra_body=GREEDY) as stream:
            for event in stream:
                kinds.append(event.type)
                if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                    partials.append(event.delta.partial_json)
            final = stream.get_final_message()
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        assert len(partials) > 1, partials  # the arguments arrived in pieces, as the upstream generated them
        assembled = json.loads("".join(partials))
        assert final.stop_reason == "tool_use"
        calls = [block for block in final.content if block.type == "tool_use"]
        assert len(calls) == 1
        _check_call(calls[0].name, assembled)
        assert calls[0].input == assembled

        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=16, tools=[WEATHER],
                                    messages=_follow_up(calls[0].id, calls[0].input), extra_body=GREEDY) as stream:
            text = "".join(stream.text_stream)
            answer = stream.get_final_message()
        assert text.strip() and answer.stop_reason in ("end_turn", "max_tokens")
