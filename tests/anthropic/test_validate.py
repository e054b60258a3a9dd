"""Request validation: what is accepted, the normal form it becomes, and errors naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from pensieve_server.anthropic.errors import InvalidRequest
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.anthropic.validate import (
    is_server_tool,
    parse_count_tokens_request,
    parse_messages_request,
)
from tests.fixtures import CLAUDE_CODE_REQUEST

BASE: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object", "properties": {}}}


def body(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def error_of(data: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(data, **kwargs)
    assert info.value.status == 400
    assert info.value.error_type == "invalid_request_error"
    return info.value.message


def user(content: Any) -> dict[str, Any]:
    return body(messages=[{"role": "user", "content": content}])


# -- the real Claude Code request -------------------------------------------------------------------

def test_captured_claude_code_request_parses() -> None:
    raw = json.loads(CLAUDE_CODE_REQUEST.read_text())["body"]
    request = parse_messages_request(raw)
    assert isinstance(request, MessagesRequest)
    assert request.model == "claude-opus-4-8"
    assert request.max_tokens == 64000
    assert request.stream is True
    assert request.thinking == {"type": "adaptive"}
    assert len(request.system) == 3 and all(block["type"] == "text" for block in request.system)
    assert len(request.tools) == 24 and request.tools[1]["name"] == "Bash"
    assert all(set(tool) <= {"name", "description", "input_schema"} for tool in request.tools)
    roles = [message["role"] for message in request.messages]
    assert roles == [m["role"] for m in raw["messages"]]
    assert "system" in roles
    system_item = request.messages[roles.index("system")]
    assert system_item["content"] == [{"type": "text", "text": raw["messages"][roles.index("system")]["content"]}]
    tool_use = request.messages[-2]["content"][0]
    assert tool_use == {"type": "tool_use", "id": "toolu_stub1", "name": "Bash",
                        "input": {"command": "echo pensieve-ok", "description": "test"}}
    result = request.messages[-1]["content"][0]
    assert result["tool_use_id"] == "toolu_stub1"
    assert result["content"] == [{"type": "text", "text": "pensieve-ok"}]
    assert result["is_error"] is False


def test_parsing_does_not_mutate_the_body() -> None:
    raw = json.loads(CLAUDE_CODE_REQUEST.read_text())["body"]
    before = copy.deepcopy(raw)
    parse_messages_request(raw)
    assert raw == before


# -- normal form ----------------------------------------------------------------------------------

def test_minimal_request_normal_form() -> None:
    request = parse_messages_request(BASE)
    assert request == MessagesRequest(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    )


def test_system_string_becomes_one_text_block_and_empty_string_none() -> None:
    assert parse_messages_request(body(system="Be brief.")).system == [{"type": "text", "text": "Be brief."}]
    assert parse_messages_request(body(system="")).system == []
    blocks = [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}]
    assert parse_messages_request(body(system=blocks)).system == blocks


def test_system_role_items_stay_in_place_with_list_content() -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "system", "content": "note"},
        {"role": "assistant", "content": "two"},
        {"role": "system", "content": [{"type": "text", "text": "more"}]},
        {"role": "user", "content": "three"},
    ]
    request = parse_messages_request(body(messages=messages))
    assert [m["role"] for m in request.messages] == ["user", "system", "assistant", "system", "user"]
    assert request.messages[1]["content"] == [{"type": "text", "text": "note"}]
    assert request.messages[3]["content"] == [{"type": "text", "text": "more"}]


def test_every_block_type_is_accepted() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    messages = [
        {"role": "user", "content": [
            {"type": "text", "text": "look", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            image,
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}, image]},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "err", "is_error": True},
            {"type": "tool_result", "tool_use_id": "toolu_1"},
        ]},
    ]
    request = parse_messages_request(body(messages=messages, tools=[TOOL]))
    assert request.messages[0]["content"] == messages[0]["content"]
    assert request.messages[1]["content"] == messages[1]["content"]
    results = request.messages[2]["content"]
    assert results[0]["content"] == messages[2]["content"][0]["content"]
    assert results[1]["content"] == [{"type": "text", "text": "err"}] and results[1]["is_error"] is True
    assert results[2]["content"] == []


def test_tools_normalised_and_server_tools_marked() -> None:
    tools = [
        {**TOOL, "cache_control": {"type": "ephemeral"}},
        {"type": "custom", "name": "plain", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ]
    request = parse_messages_request(body(tools=tools))
    assert request.tools == [
        TOOL,
        {"name": "plain", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search"},
    ]
    assert [is_server_tool(tool) for tool in request.tools] == [False, False, True]


@pytest.mark.parametrize(
    "choice",
    [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "get_weather"},
     {"type": "auto", "disable_parallel_tool_use": True}],
)
def test_tool_choice_variants(choice: dict[str, Any]) -> None:
    assert parse_messages_request(body(tools=[TOOL], tool_choice=choice)).tool_choice == choice


def test_sampling_options_and_flags() -> None:
    request = parse_messages_request(body(
        temperature=0, top_p=0.95, top_k=40, stop_sequences=["\n\nHuman:", "END"], stream=True,
        metadata={"user_id": "u"}, thinking={"type": "enabled", "budget_tokens": 2048},
    ))
    assert request.temperature == 0.0 and isinstance(request.temperature, float)
    assert request.top_p == 0.95 and request.top_k == 40
    assert request.stop_sequences == ["\n\nHuman:", "END"]
    assert request.stream is True
    assert request.metadata == {"user_id": "u"}
    assert request.thinking == {"type": "enabled", "budget_tokens": 2048}


def test_ignored_fields_and_unknown_fields_are_accepted() -> None:
    request = parse_messages_request(body(
        output_config={"effort": "high"}, context_management={"edits": []}, service_tier="auto",
        container="c_1", mcp_servers=[], brand_new_field={"x": 1}, thinking={"type": "adaptive"},
    ))
    assert request.model == "claude-sonnet-4-5"


def test_nulls_in_optional_fields_count_as_absent() -> None:
    request = parse_messages_request(body(system=None, tools=None, temperature=None, stream=None,
                                          tool_choice=None, stop_sequences=None, metadata=None))
    assert request.system == [] and request.tools == [] and request.temperature is None
    assert request.stream is False and request.tool_choice is None


def test_integral_float_max_tokens_is_accepted() -> None:
    assert parse_messages_request(body(max_tokens=64.0)).max_tokens == 64


def test_count_tokens_does_not_need_max_tokens() -> None:
    request = parse_count_tokens_request(body(max_tokens=..., tools=[TOOL]))
    assert request.max_tokens == 1 and request.tools == [TOOL]
    assert parse_count_tokens_request(body(max_tokens=5)).max_tokens == 5
    with pytest.raises(InvalidRequest, match="^max_tokens: Input should be greater than or equal to 1$"):
        parse_count_tokens_request(body(max_tokens=0))
    with pytest.raises(InvalidRequest, match="^messages: Field required$"):
        parse_count_tokens_request({"model": "x"})


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "request body: Input should be a valid dictionary (a JSON object)"),
        (body(model=...), "model: Field required"),
        (body(model=7), "model: Input should be a valid string"),
        (body(model=""), "model: String should have at least 1 character"),
        (body(max_tokens=...), "max_tokens: Field required"),
        (body(max_tokens=True), "max_tokens: Input should be a valid integer"),
        (body(max_tokens="100"), "max_tokens: Input should be a valid integer"),
        (body(max_tokens=1.5), "max_tokens: Input should be a valid integer, got a number with a fractional part"),
        (body(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
        (body(messages=...), "messages: Field required"),
        (body(messages={}), "messages: Input should be a valid list"),
        (body(messages=[]), "messages: at least one message is required"),
        (body(messages=["hi"]), "messages.0: Input should be a valid dictionary"),
        (body(messages=[{"content": "x"}]), "messages.0.role: Field required"),
        (body(messages=[{"role": "bot", "content": "x"}]),
         "messages.0.role: Input should be 'user', 'assistant' or 'system'"),
        (body(messages=[{"role": "user"}]), "messages.0.content: Field required"),
        (user(5), "messages.0.content: Input should be a valid list"),
        (user({"type": "text", "text": "x"}), "messages.0.content: Input should be a valid list"),
        (user(["x"]), "messages.0.content.0: Input should be a valid dictionary or object to extract fields from"),
        (user([{"text": "x"}]), "messages.0.content.0: Unable to extract tag using discriminator 'type'"),
        (user([{"type": "text"}]), "messages.0.content.0.text: Field required"),
        (user([{"type": "text", "text": 1}]), "messages.0.content.0.text: Input should be a valid string"),
        (user([{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "x"}}]),
         "messages.0.content.0.source.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
         "'image/webp'"),
        (user([{"type": "image"}]), "messages.0.content.0.source: Field required"),
        (user([{"type": "tool_use", "id": "t", "name": "n", "input": "{}"}]),
         "messages.0.content.0.input: Input should be a valid dictionary"),
        (user([{"type": "tool_use", "name": "n", "input": {}}]), "messages.0.content.0.id: Field required"),
        (user([{"type": "tool_result", "content": "x"}]), "messages.0.content.0.tool_use_id: Field required"),
        (user([{"type": "tool_result", "tool_use_id": "t", "content": 3}]),
         "messages.0.content.0.content: Input should be a valid list"),
        (user([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_use"}]}]),
         "messages.0.content.0.content.0: Input tag 'tool_use' found using 'type' does not match any of the "
         "expected tags: 'text', 'image', 'document', 'search_result'"),
        (user([{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}]),
         "messages.0.content.0.is_error: Input should be a valid boolean"),
        (user([{"type": "thinking"}]), "messages.0.content.0.thinking: Field required"),
        (user([{"type": "redacted_thinking"}]), "messages.0.content.0.data: Field required"),
        (body(messages=[{"role": "system", "content": [{"type": "image"}]}]),
         "messages.0.content.0: Input tag 'image' found using 'type' does not match any of the expected tags: "
         "'text'"),
        (body(system=5), "system: Input should be a valid list"),
        (body(system=[{"type": "image"}]),
         "system.0: Input tag 'image' found using 'type' does not match any of the expected tags: 'text'"),
        (body(tools={}), "tools: Input should be a valid list"),
        (body(tools=[{"input_schema": {}}]), "tools.0.name: Field required"),
        (body(tools=[{"name": "a"}]), "tools.0.input_schema: Field required"),
        (body(tools=[{"name": "a", "input_schema": "object"}]), "tools.0.input_schema: Input should be a valid dictionary"),
        (body(tools=[{"name": "a", "description": 1, "input_schema": {}}]),
         "tools.0.description: Input should be a valid string"),
        (body(tools=[TOOL, TOOL]), "tools: Tool names must be unique."),
        (body(tool_choice="auto"), "tool_choice: Input should be a valid dictionary"),
        (body(tool_choice={}), "tool_choice.type: Field required"),
        (body(tool_choice={"type": "required"}), "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"),
        (body(tool_choice={"type": "tool"}), "tool_choice.name: Field required"),
        (body(tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
         "tool_choice.disable_parallel_tool_use: Input should be a valid boolean"),
        (body(stop_sequences="END"), "stop_sequences: Input should be a valid list"),
        (body(stop_sequences=["a", 1]), "stop_sequences.1: Input should be a valid string"),
        (body(temperature="0.5"), "temperature: Input should be a valid number"),
        (body(temperature=True), "temperature: Input should be a valid number"),
        (body(temperature=1.5), "temperature: Input should be less than or equal to 1"),
        (body(temperature=-0.1), "temperature: Input should be greater than or equal to 0"),
        (body(top_p=2), "top_p: Input should be less than or equal to 1"),
        (body(top_k=-1), "top_k: Input should be greater than or equal to 0"),
        (body(top_k=0.5), "top_k: Input should be a valid integer, got a number with a fractional part"),
        (body(stream="true"), "stream: Input should be a valid boolean"),
        (body(metadata=[]), "metadata: Input should be a valid dictionary"),
        (body(metadata={"user_id": 5}), "metadata.user_id: Input should be a valid string"),
        (body(thinking={"type": "on"}), "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'"),
        (body(thinking={"type": "enabled"}), "thinking.budget_tokens: Field required"),
        (body(output_config="high"), "output_config: Input should be a valid dictionary"),
        (body(context_management=[]), "context_management: Input should be a valid dictionary"),
        (body(service_tier=1), "service_tier: Input should be a valid string"),
        (body(mcp_servers={}), "mcp_servers: Input should be a valid list"),
        (body(container=1), "container: Input should be a valid string or dictionary"),
    ],
)
def test_errors_name_the_field(data: Any, message: str) -> None:
    assert error_of(data) == message


def test_unknown_block_type_lists_expected_tags() -> None:
    message = error_of(user([{"type": "video", "url": "x"}]))
    assert message.startswith("messages.0.content.0: Input tag 'video' found using 'type' does not match")
    for kind in ("'text'", "'image'", "'tool_use'", "'tool_result'", "'thinking'", "'document'"):
        assert kind in message


def test_errors_point_at_the_right_message_and_block() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": [{"type": "text", "text": "ok"}, {"type": "text", "text": None}]}]
    assert error_of(body(messages=messages)) == "messages.2.content.1.text: Field required"


def test_limits_on_messages_and_tools() -> None:
    many = [{"role": "user", "content": "x"}] * 4
    assert error_of(body(messages=many), max_messages=3) == \
        "messages: too many messages (4); this server accepts at most 3"
    assert len(parse_messages_request(body(messages=many), max_messages=4).messages) == 4
    tools = [{**TOOL, "name": f"t{i}"} for i in range(3)]
    assert error_of(body(tools=tools), max_tools=2) == "tools: too many tools (3); this server accepts at most 2"


# -- tool_result pairing ------------------------------------------------------------------------------

def _call(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": "get_weather", "input": {}}


def _result(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}


def test_orphan_tool_result_is_400_with_anthropics_wording() -> None:
    messages = [{"role": "user", "content": "go"},
                {"role": "assistant", "content": [_call("toolu_a")]},
                {"role": "user", "content": [_result("toolu_a"), {"type": "text", "text": "and"},
                                             _result("toolu_x"), _result("toolu_y")]}]
    assert error_of(body(messages=messages, tools=[TOOL])) == (
        "messages.2.content.2: unexpected `tool_use_id` found in `tool_result` blocks: toolu_x, toolu_y. "
        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
    with pytest.raises(InvalidRequest):
        parse_count_tokens_request(body(messages=messages, tools=[TOOL]))


def test_tool_result_must_answer_the_previous_assistant_turn_not_an_older_one() -> None:
    messages = [{"role": "user", "content": "go"},
                {"role": "assistant", "content": [_call("toolu_old")]},
                {"role": "user", "content": [_result("toolu_old")]},
                {"role": "assistant", "content": "done"},
                {"role": "user", "content": [_result("toolu_old")]}]
    assert error_of(body(messages=messages)).startswith("messages.4.content.0: unexpected `tool_use_id`")
    first = [{"role": "user", "content": [_result("toolu_none")]}]
    assert error_of(body(messages=first)).startswith("messages.0.content.0: unexpected `tool_use_id`")


def test_results_split_over_consecutive_user_turns_are_accepted() -> None:
    messages = [{"role": "user", "content": "go"},
                {"role": "assistant", "content": [_call("toolu_a"), _call("toolu_b")]},
                {"role": "user", "content": [_result("toolu_a")]},
                {"role": "user", "content": [_result("toolu_b")]}]
    assert len(parse_messages_request(body(messages=messages)).messages) == 4


def test_every_captured_claude_code_request_passes_the_pairing_check() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code"
    files = sorted(root.rglob("*.json"))
    assert files
    checked = 0
    for path in files:
        item = json.loads(path.read_text()).get("body")
        if isinstance(item, dict) and isinstance(item.get("messages"), list) and item.get("max_tokens"):
            parse_messages_request(item)
            checked += 1
    assert checked > 0
