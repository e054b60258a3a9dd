"""Fuzzing the HTTP surface: no input a client can send earns a 5xx, a traceback or a malformed answer.

Hypothesis builds valid-ish Messages requests and then breaks them (wrong types, missing fields,
huge or negative ``max_tokens``, bad roles, unknown block types, deep nesting, non-JSON bodies,
wrong Content-Type, unicode junk) and sends them with httpx to the real app on Waitress over a
ScriptedBackend that encodes prompts as UTF-8, as the real engines do. Each fuzz test sends
``PENSIEVE_FUZZ_EXAMPLES`` requests (default 260; four tests, so over 1,000 in CI); the hostile-text
test (lone surrogates, NULs, noncharacters, very long strings in every field; issue 22) sends
``PENSIEVE_HOSTILE_EXAMPLES`` (default 1,000) to each endpoint. The committed OpenAPI description is
checked for validity and for covering every Flask route, and the server is tested against it (schemathesis).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pensieve_server.anthropic.validate import PASSTHROUGH_BLOCKS
from pensieve_server.engine.scripted import ScriptedBackend
from tests.security import (
    CLIENT_ERROR_STATUSES,
    assert_anthropic_error,
    assert_message,
    assert_stream,
    assert_valid_answer,
    env_int,
    raw_http,
)
from tests.serverutil import RunningServer, running_server

EXAMPLES = env_int("PENSIEVE_FUZZ_EXAMPLES", 260)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # leave no .hypothesis folder behind; failures print their reproducing example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
OPENAPI_PATH = Path(__file__).resolve().parents[2] / "pensieve_server" / "openapi.json"
GOOD: dict[str, Any] = {"model": "scripted", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
# Names that reach the scripted model: its own, and Claude ids that map to the default model by tier.
SERVED_MODELS = ("scripted", "claude-sonnet-4-5-20250929", "claude-3-5-haiku-latest", "claude-opus-4-1[1m]", "opus")


@pytest.fixture
def fuzz_server() -> Iterator[RunningServer]:
    """A fresh server per test, inside the per-test isolated HOME (conftest)."""
    with running_server({"scripted": Utf8ScriptedBackend()}, queue_size=64) as server:
        yield server


def assert_still_serving(server: RunningServer) -> None:
    """After the storm: liveness answers and a plain request still gets a complete Message."""
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200
    with server.client(timeout=30) as http:
        response = http.post("/v1/messages", json=GOOD)
    assert response.status_code == 200, response.text
    assert_message(response.json())
    # The worker clears its job just after the last event went out, so idle comes a moment after the answer.
    deadline = time.monotonic() + 30
    while any(getattr(model.scheduler, "active", None) is not None or model.scheduler.depth
              for model in server.pool.loaded()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for model in server.pool.loaded():
        assert getattr(model.scheduler, "active", None) is None and model.scheduler.depth == 0


# -- strategies -----------------------------------------------------------------------------------

junk_text = st.text(max_size=40)  # any code point but lone surrogates: controls, RTL marks, emoji, NULs
names = st.text(min_size=1, max_size=16)


def request_strategies(text: st.SearchStrategy[str], name: st.SearchStrategy[str], key: st.SearchStrategy[str],
                       model: st.SearchStrategy[str], items: int = 4) -> SimpleNamespace:
    """Messages requests of every shape: ``text`` in every free-text field, ``name`` in every id, name and
    stop sequence, ``key`` as every free-form object key (tool input, schemas, metadata-like objects).
    ``items`` bounds every list and object (smaller is quicker to generate)."""
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
    values = st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=items) | st.dictionaries(key, inner, max_size=items),
        max_leaves=4 * items,
    )
    objects = st.dictionaries(key, values, max_size=items)
    text_block = st.fixed_dictionaries(
        {"type": st.just("text"), "text": text},
        optional={"cache_control": st.just({"type": "ephemeral"})},
    )
    tool_use_block = st.fixed_dictionaries(
        {"type": st.just("tool_use"), "id": name, "name": name, "input": objects}
    )
    tool_result_block = st.fixed_dictionaries(
        {"type": st.just("tool_result"), "tool_use_id": name},
        optional={"content": text | st.lists(text_block, max_size=2), "is_error": st.booleans()},
    )
    thinking_block = st.fixed_dictionaries(
        {"type": st.just("thinking"), "thinking": text}, optional={"signature": text}
    )
    redacted_block = st.fixed_dictionaries({"type": st.just("redacted_thinking"), "data": text})
    passthrough_block = st.fixed_dictionaries({"type": st.sampled_from(PASSTHROUGH_BLOCKS)}, optional={"x": values})
    content_block = text_block | tool_use_block | tool_result_block | thinking_block | redacted_block | passthrough_block

    chat_message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]), "content": text | st.lists(content_block, max_size=items - 1)}
    )
    system_message = st.fixed_dictionaries(
        {"role": st.just("system"), "content": text | st.lists(text_block, max_size=2)}
    )
    property_schema = st.fixed_dictionaries(
        {"type": st.just("string")}, optional={"description": text, "enum": st.lists(text, max_size=2)}
    )
    input_schema = (
        st.just({"type": "object", "properties": {"path": {"type": "string"}}})
        | st.fixed_dictionaries({"type": st.just("object"),
                                 "properties": st.dictionaries(key, property_schema, max_size=3)})
        | objects
    )
    custom_tool = st.fixed_dictionaries(
        {"name": name, "input_schema": input_schema},
        optional={"description": text, "type": st.just("custom")},
    )
    server_tool = st.fixed_dictionaries(
        {"type": st.sampled_from(["web_search_20250305", "code_execution_20250522", "bash_20250124"]), "name": name}
    )
    tool_choice = st.fixed_dictionaries(
        {"type": st.sampled_from(["auto", "any", "none"])}, optional={"disable_parallel_tool_use": st.booleans()}
    ) | st.fixed_dictionaries({"type": st.just("tool"), "name": name})
    thinking_config = (
        st.just({"type": "disabled"}) | st.just({"type": "adaptive"})
        | st.fixed_dictionaries({"type": st.just("enabled"), "budget_tokens": st.integers(1, 100_000)})
    )
    unit_interval = st.floats(0.0, 1.0)
    requests = st.fixed_dictionaries(
        {
            "model": model,
            "max_tokens": st.integers(1, 64),
            "messages": st.lists(chat_message | system_message, min_size=1, max_size=items),
        },
        optional={
            "system": text | st.lists(text_block, max_size=2),
            "tools": st.lists(custom_tool | server_tool, max_size=3, unique_by=lambda tool: tool["name"]),
            "tool_choice": tool_choice,
            "stop_sequences": st.lists(name, max_size=3),
            "stream": st.booleans(),
            "metadata": st.fixed_dictionaries({}, optional={"user_id": text}),
            "thinking": thinking_config,
            "temperature": unit_interval,
            "top_p": unit_interval,
            "top_k": st.integers(0, 500),
            "output_config": objects,
            "context_management": objects,
            "service_tier": st.sampled_from(["auto", "standard_only"]),
        },
    )
    return SimpleNamespace(leaves=leaves, values=values, objects=objects, requests=requests.map(answer_tool_results))


def answer_tool_results(body: dict[str, Any]) -> dict[str, Any]:
    """Give every generated ``tool_result`` the assistant ``tool_use`` it answers, just before its turn, as
    the API requires (an orphan is a 400 by design; the fuzzers want well-formed conversations)."""
    messages: list[dict[str, Any]] = []
    for message in body["messages"]:
        content = message["content"]
        ids = [block["tool_use_id"] for block in content if block.get("type") == "tool_result"] \
            if isinstance(content, list) else []
        if ids:
            calls = [{"type": "tool_use", "id": tool_id, "name": "look", "input": {}} for tool_id in ids]
            previous = messages[-1] if messages else None
            if previous is not None and previous["role"] == "assistant":
                before = previous["content"]
                before = [{"type": "text", "text": before}] if isinstance(before, str) else before
                messages[-1] = {**previous, "content": [*before, *calls]}
            else:
                messages.append({"role": "assistant", "content": calls})
        messages.append(message)
    return {**body, "messages": messages}


_valid = request_strategies(junk_text, names, st.text(max_size=8), st.sampled_from(SERVED_MODELS))
json_leaves, json_values, json_objects = _valid.leaves, _valid.values, _valid.objects
valid_requests = _valid.requests

MESSAGE_KEYS = ("model", "max_tokens", "messages", "system", "tools", "tool_choice", "stop_sequences", "stream",
                "metadata", "thinking", "temperature", "top_p", "top_k", "container", "mcp_servers")
bad_max_tokens = st.one_of(
    st.integers(max_value=0), st.integers(min_value=10**6), st.just(2**63), st.just(10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), junk_text, st.lists(st.integers()),
)


def nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def mutated_requests(draw: st.DrawFn) -> Any:
    """A valid request with one to three things broken in it."""
    body: Any = draw(valid_requests)
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(body, dict):
            break
        mutation = draw(st.integers(0, 9))
        messages = body.get("messages")
        if mutation == 0:
            body.pop(draw(st.sampled_from(MESSAGE_KEYS)), None)
        elif mutation == 1:
            body[draw(st.sampled_from(MESSAGE_KEYS) | st.text(max_size=10))] = draw(json_values)
        elif mutation == 2:
            body["max_tokens"] = draw(bad_max_tokens)
        elif mutation == 3 and isinstance(messages, list) and messages and isinstance(messages[0], dict):
            messages[draw(st.integers(0, len(messages) - 1))] = {
                "role": draw(st.sampled_from(["robot", "", "USER", "tool", "function"]) | junk_text),
                "content": draw(junk_text),
            }
        elif mutation == 4 and isinstance(messages, list) and messages:
            index = draw(st.integers(0, len(messages) - 1))
            messages[index] = {"role": "user", "content": [
                {"type": draw(st.sampled_from(["video", "tool_call", "TEXT", "", "function"]) | junk_text),
                 "text": draw(junk_text)}]}
        elif mutation == 5 and isinstance(messages, list) and messages:
            messages[draw(st.integers(0, len(messages) - 1))] = draw(json_values)
        elif mutation == 6:
            where = draw(st.sampled_from(["metadata", "tools", "messages", "system", "output_config"]))
            body[where] = nest(draw(json_leaves), draw(st.integers(1, 200)))
        elif mutation == 7:
            body["temperature" if draw(st.booleans()) else "top_p"] = draw(
                st.floats(allow_nan=True, allow_infinity=True) | junk_text | st.booleans())
        elif mutation == 8:
            body["tools"] = [draw(json_values) for _ in range(draw(st.integers(0, 3)))]
            body["tool_choice"] = draw(json_values)
        else:
            body = draw(json_values)
    return body


CONTENT_TYPES = (
    "application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/json; charset=utf-16", "application/vnd.anthropic+json", "application/xml", "*/*", "json",
)


# -- fuzz tests -----------------------------------------------------------------------------------

def test_fuzz_valid_requests_are_answered_completely(fuzz_server: RunningServer) -> None:
    """Every well-formed request (all block kinds, tools, tool_choice, stream on/off) gets a whole Message."""
    sent = 0
    with fuzz_server.client(timeout=30) as http:

        @FUZZ
        @given(body=valid_requests, path=st.sampled_from(["/v1/messages", "/v1/messages?beta=true"]))
        def check(body: dict[str, Any], path: str) -> None:
            nonlocal sent
            sent += 1
            response = http.post(path, json=body)
            assert response.status_code == 200, (body, response.text[:500])
            if body.get("stream"):
                assert response.headers["content-type"].startswith("text/event-stream")
                assert_stream(response.text)
            else:
                assert_message(response.json())

        check()
    assert sent >= EXAMPLES
    assert_still_serving(fuzz_server)


def test_fuzz_mutated_requests_get_client_errors(fuzz_server: RunningServer) -> None:
    """Broken requests to both endpoints: a 2xx Message or an Anthropic 4xx, never a 5xx."""
    sent = 0
    with fuzz_server.client(timeout=30) as http:

        @FUZZ
        @given(body=mutated_requests(), path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]))
        def check(body: Any, path: str) -> None:
            nonlocal sent
            sent += 1
            raw = json.dumps(body, allow_nan=True).encode()  # NaN/Infinity too: Python's json accepts them
            response = http.post(path, content=raw, headers={"content-type": "application/json"})
            assert_valid_answer(response)
            if path.endswith("count_tokens") and response.status_code == 200:
                assert isinstance(response.json()["input_tokens"], int)

        check()
    assert sent >= EXAMPLES
    assert_still_serving(fuzz_server)


def test_fuzz_non_json_bodies_and_content_types(fuzz_server: RunningServer) -> None:
    """Bytes that are not a JSON object, under any Content-Type (or none): a 400, never a 5xx."""
    sent = 0
    bodies = (
        st.binary(max_size=2048)
        | junk_text.map(lambda text: text.encode("utf-8"))
        | st.sampled_from([b"", b"null", b"[]", b"\"x\"", b"{", b"{}", b"\xef\xbb\xbf{}", b"\x00" * 64,
                           b"model=scripted&max_tokens=5", json.dumps(GOOD).encode("utf-32")])
        | valid_requests.map(lambda body: json.dumps(body).encode("utf-8")[: max(1, len(json.dumps(body)) // 2)])
        | valid_requests.map(lambda body: json.dumps(body).encode("utf-8"))  # fine unless the Content-Type is wrong
    )
    with fuzz_server.client(timeout=30) as http:

        @FUZZ
        @given(body=bodies, content_type=st.none() | st.sampled_from(CONTENT_TYPES),
               path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]))
        def check(body: bytes, content_type: str | None, path: str) -> None:
            nonlocal sent
            sent += 1
            headers = {"content-type": content_type} if content_type else {}
            response = http.post(path, content=body, headers=headers)
            assert_valid_answer(response)

        check()
    assert sent >= EXAMPLES
    assert_still_serving(fuzz_server)


KNOWN_PATHS = ("/", "/health", "/metrics", "/openapi.json", "/v1/models", "/v1/models/scripted",
               "/v1/models/claude-opus-4-1", "/v1/messages", "/v1/messages/count_tokens", "/v1/complete",
               "/v1/messages/batches", "/v1/../health", "//v1/models", "/v1/models/", "/static/x")


def test_fuzz_methods_paths_and_headers(fuzz_server: RunningServer) -> None:
    """Any method on any path with or without credentials: the documented status, in Anthropic's shape."""
    sent = 0
    token = fuzz_server.token
    auth = st.sampled_from([
        {}, {"x-api-key": token}, {"authorization": f"Bearer {token}"}, {"x-api-key": "wrong"},
        {"authorization": "Bearer"}, {"authorization": "bearer " + token}, {"authorization": f"Basic {token}"}, {"x-api-key": token + "x"},
    ])
    paths = st.sampled_from(KNOWN_PATHS) | st.text(max_size=30).map(lambda text: "/" + quote(text, safe="/?=&"))
    with httpx.Client(base_url=fuzz_server.base_url, timeout=30) as http:

        @FUZZ
        @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
               path=paths, headers=auth, body=st.none() | st.just(GOOD) | json_values)
        def check(method: str, path: str, headers: dict[str, str], body: Any) -> None:
            nonlocal sent
            sent += 1
            content = None if body is None else json.dumps(body).encode()
            if content is not None:
                headers = {**headers, "content-type": "application/json"}
            response = http.request(method, path, headers=headers, content=content)
            assert_valid_answer(response, method)
            if response.status_code == 401:
                assert headers.get("x-api-key") != token and headers.get("authorization") != f"Bearer {token}"

        check()
    assert sent >= EXAMPLES
    assert_still_serving(fuzz_server)


def test_deeply_nested_json_is_a_400(fuzz_server: RunningServer) -> None:
    """100,000 nested arrays must be refused as bad input, not crash the decoder into a 500."""
    with fuzz_server.client(timeout=30) as http:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            response = http.post(path, content=b"[" * 100_000 + b"]" * 100_000,
                                 headers={"content-type": "application/json"})
            assert_anthropic_error(response, 400, "invalid_request_error")


# -- text that is not valid Unicode, NULs, noncharacters, very long strings (issue 22) --------------

HOSTILE_EXAMPLES = env_int("PENSIEVE_HOSTILE_EXAMPLES", 1000)
NONCHARACTERS = ("\ufdd0", "\ufdef", "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff")
SURROGATE = re.compile("[\ud800-\udfff]")
odd_characters = st.sampled_from(["\x00", *NONCHARACTERS]) | st.characters()  # valid Unicode, however odd
lone_surrogates = st.characters(categories=["Cs"])


def long_text(characters: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(characters), st.sampled_from([4_096, 20_000, 100_000])).map(
        lambda pair: pair[0] * pair[1])


odd_text = (
    st.text(odd_characters, max_size=12)
    | st.text(st.sampled_from(["\x00", *NONCHARACTERS, "a"]), max_size=8)
    | long_text(["a", "\x00", "\uffff", "\U0001f600", "é"])
)
broken_text = (  # a lone surrogate in about half of the strings
    odd_text
    | st.text(odd_characters | lone_surrogates, min_size=1, max_size=12)
    | st.tuples(junk_text, lone_surrogates, junk_text).map("".join)
    | long_text(["\ud800", "\udfff"])
)


def _hostile(text: st.SearchStrategy[str], key_characters: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    name = text.filter(bool)
    served = st.sampled_from(SERVED_MODELS)
    return request_strategies(text, name, st.text(key_characters, max_size=8), served | served | name,
                              items=3).requests


# Half the bodies hold only valid (odd) Unicode and must be answered; half carry lone surrogates somewhere.
hostile_requests = _hostile(odd_text, odd_characters) | _hostile(broken_text, odd_characters | lone_surrogates)


class Utf8ScriptedBackend(ScriptedBackend):
    """Encodes every prompt as UTF-8 first, as llama.cpp and MLX do, so invalid Unicode breaks here as it would there."""

    def tokenize(self, text: str) -> list[int]:
        text.encode("utf-8")
        return super().tokenize(text)


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Every log record with a traceback or at ERROR and above, from any logger (waitress's too)."""
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info or record.levelno >= logging.ERROR:
                records.append(record)

    handler, root = Catch(logging.DEBUG), logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def assert_no_tracebacks(records: list[logging.LogRecord], capfd: pytest.CaptureFixture[str]) -> None:
    shown = [f"{record.name}: {record.getMessage()}" for record in records]
    assert not records, shown[:5]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err[-3000:]


def surrogate_fields(body: dict[str, Any]) -> set[str]:
    """The top-level fields whose value (or an object key inside it) holds a lone surrogate."""

    def holds(value: Any) -> bool:
        if isinstance(value, str):
            return SURROGATE.search(value) is not None
        if isinstance(value, dict):
            return any(holds(key) or holds(item) for key, item in value.items())
        return isinstance(value, list) and any(holds(item) for item in value)

    return {field for field, value in body.items() if holds(value)}


def encoded(body: dict[str, Any], escaped: bool) -> bytes:
    """JSON as a client writes it: lone surrogates as ``\\ud800`` escapes, or as raw (invalid) UTF-8 bytes."""
    if escaped:
        return json.dumps(body).encode()
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


def check_hostile_answer(response: httpx.Response, body: dict[str, Any], path: str) -> str:
    """Never a 5xx; a lone surrogate is a 400 naming a field that holds one; NULs and noncharacters pass.

    Returns what happened: "refused" (invalid Unicode), "answered" (2xx) or "other" (another 4xx).
    """
    assert_valid_answer(response)
    fields = surrogate_fields(body)
    if fields:
        error = assert_anthropic_error(response, 400, "invalid_request_error")["error"]["message"]
        end = error.find(": The request body is not valid JSON: ")
        assert end > 0 and "surrogate in string" in error, error
        loc = error[:end]
        assert loc.split(".")[0] in fields, (error, fields)
        assert not SURROGATE.search(error)
        return "refused"
    if response.status_code >= 400:
        message = response.json()["error"]["message"]
        assert "surrogate" not in message and "not valid JSON" not in message, message
        assert body["model"] not in SERVED_MODELS or "prompt is too long" in message, message
        assert response.status_code in (400, 404), message
        return "other"
    if path.endswith("count_tokens"):
        assert isinstance(response.json()["input_tokens"], int)
    elif body.get("stream"):
        assert assert_stream(response.text)[-1][0] == "message_stop"
    else:
        assert_message(response.json())
    return "answered"


@pytest.fixture
def utf8_server() -> Iterator[RunningServer]:
    backend = Utf8ScriptedBackend(context_length=4_000_000, default_reply="ok")  # room for many 100k strings
    with running_server({"scripted": backend}, queue_size=64) as server:
        yield server


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_fuzz_hostile_text_in_every_field(utf8_server: RunningServer, server_log: list[logging.LogRecord],
                                          capfd: pytest.CaptureFixture[str], path: str) -> None:
    """Issue 22's done-when: >= 1,000 bodies per endpoint with lone surrogates (escaped or raw), NULs,
    noncharacters and very long strings anywhere; 0 answers of 5xx, 0 tracebacks, the server still up."""
    outcomes: dict[str, int] = {"refused": 0, "answered": 0, "other": 0}
    with utf8_server.client(timeout=60) as http:

        @settings(FUZZ, max_examples=HOSTILE_EXAMPLES)
        @given(body=hostile_requests, escaped=st.booleans())
        def check(body: dict[str, Any], escaped: bool) -> None:
            response = http.post(path, content=encoded(body, escaped), headers={"content-type": "application/json"})
            outcomes[check_hostile_answer(response, body, path)] += 1

        check()
    assert sum(outcomes.values()) >= HOSTILE_EXAMPLES, outcomes
    assert outcomes["refused"] >= HOSTILE_EXAMPLES // 10 and outcomes["answered"] >= HOSTILE_EXAMPLES // 10, outcomes
    assert_still_serving(utf8_server)
    assert_no_tracebacks(server_log, capfd)


ISSUE_BODIES = (  # the two bodies of issue 22, byte for byte
    (b'{"model": "claude-sonnet-4-5", "max_tokens": 4, "messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages.0.content"),
    (b'{"model": "claude-sonnet-4-5", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], '
     b'"system": "\\ud800"}', "system"),
)


@pytest.mark.parametrize(("raw", "field"), ISSUE_BODIES)
def test_issue_bodies_are_refused_naming_the_field(utf8_server: RunningServer, server_log: list[logging.LogRecord],
                                                   capfd: pytest.CaptureFixture[str], raw: bytes, field: str) -> None:
    """As the real API: 400 invalid_request_error, "not valid JSON: no low surrogate in string", for both routes."""
    with utf8_server.client(timeout=30) as http:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            for stream in (b"", b', "stream": true'):
                body = raw[:-1] + stream + b"}"
                response = http.post(path, content=body, headers={"content-type": "application/json"})
                message = assert_anthropic_error(response, 400, "invalid_request_error")["error"]["message"]
                assert message.startswith(f"{field}: The request body is not valid JSON: no low surrogate in string")
    assert_no_tracebacks(server_log, capfd)


EVERY_FIELD = {  # one string of the same text in every string field a request can carry
    "model": "claude-sonnet-4-5-{}",
    "system": [{"type": "text", "text": "{}"}],
    "messages": [
        {"role": "system", "content": "{}"},
        {"role": "user", "content": [{"type": "text", "text": "{}"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "{}", "signature": "{}"},
                                          {"type": "tool_use", "id": "toolu_{}", "name": "look_{}",
                                           "input": {"{}": ["{}", {"deep": {"deeper": "{}"}}]}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_{}",
                                      "content": [{"type": "text", "text": "{}"}]}]},
    ],
    "tools": [{"name": "look_{}", "description": "{}", "input_schema": {
        "type": "object", "properties": {"{}": {"type": "string", "description": "{}", "enum": ["{}"]}}}}],
    "tool_choice": {"type": "tool", "name": "look_{}"},
    "metadata": {"user_id": "{}"},
    "stop_sequences": ["{}"],
}


def every_field(text: str) -> dict[str, Any]:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{}", text)
        if isinstance(value, dict):
            return {fill(key): fill(item) for key, item in value.items()}
        return [fill(item) for item in value] if isinstance(value, list) else value

    return {**fill(EVERY_FIELD), "max_tokens": 4}


def locations(value: Any, loc: str = "") -> Iterator[str]:
    """The dotted location of every string (and object key) in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{loc}.{key}" if loc else key
            yield where
            yield from locations(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from locations(item, f"{loc}.{index}" if loc else str(index))
    elif isinstance(value, str):
        yield loc


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_a_lone_surrogate_in_any_string_is_a_400_naming_it(utf8_server: RunningServer, path: str) -> None:
    """Each string of a full request in turn holds the only lone surrogate: the error names exactly that place."""
    clean = every_field("x")
    places = sorted(set(locations(clean)) - {"max_tokens"})
    assert len(places) > 30
    with utf8_server.client(timeout=30) as http:
        for place in places:
            body = json.loads(json.dumps(clean))
            *parents, last = place.split(".")
            node: Any = body
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            key: Any = int(last) if isinstance(node, list) else last
            if isinstance(node, dict) and not isinstance(node[key], str):  # an object key: break the key itself
                node["\udc00" + key] = node.pop(key)
                expected = ".".join([*parents, "\\udc00" + key])
            else:
                node[key] = node[key] + "\ud83d"
                expected = place
            response = http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
            message = assert_anthropic_error(response, 400, "invalid_request_error")["error"]["message"]
            assert message.startswith(expected + ": The request body is not valid JSON: "), (place, message)


@pytest.mark.parametrize("text", ["\x00", "a\x00b", "\uffff\ufffe\ufdd0", "\U0010ffff\U0001fffe", "\ufeff\u202e",
                                  "\U0001f600", "x" * 100_000, "\x00" * 20_000],
                         ids=["nul", "nul-inside", "noncharacters", "plane-ends", "bom-bidi", "emoji", "long", "long-nul"])
def test_nul_noncharacters_and_long_strings_in_every_field_work(utf8_server: RunningServer, text: str) -> None:
    """Valid Unicode, however odd, is answered in full by both routes (streamed and not), never refused."""
    body = every_field(text)
    with utf8_server.client(timeout=60) as http:
        counted = http.post("/v1/messages/count_tokens", json=body)
        assert counted.status_code == 200, counted.text[:500]
        assert counted.json()["input_tokens"] > len(text)
        for stream in (False, True):
            response = http.post("/v1/messages", json={**body, "stream": stream})
            assert response.status_code == 200, response.text[:500]
            assert_stream(response.text)[-1][0] == "message_stop" if stream else assert_message(response.json())
    prompt = utf8_server.pool.loaded()[0].backend.prompts[-1]
    assert prompt.count(text) >= 5  # system, messages, tool result, tool description …: it reached the model


def test_nan_and_infinity_are_not_json(utf8_server: RunningServer) -> None:
    """Python's json reads NaN; JSON has none, and a forwarded body with one could not be encoded again."""
    with utf8_server.client(timeout=30) as http:
        for constant in (b"NaN", b"Infinity", b"-Infinity"):
            raw = b'{"model": "scripted", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], ' \
                  b'"output_config": {"x": ' + constant + b'}}'
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                response = http.post(path, content=raw, headers={"content-type": "application/json"})
                message = assert_anthropic_error(response, 400, "invalid_request_error")["error"]["message"]
                assert "not valid JSON" in message and constant.decode().lstrip("-") in message


# -- the OpenAPI description ----------------------------------------------------------------------

def _openapi() -> dict[str, Any]:
    return json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_document_is_well_formed() -> None:
    """OpenAPI 3.1 with resolvable refs, both auth schemes, and the Anthropic error shape on every error."""
    spec = _openapi()
    assert spec["openapi"].startswith("3.1")
    for ref in set(_refs(spec)):
        node: Any = spec
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"] == {**schemes["ApiKeyAuth"], "type": "apiKey", "in": "header", "name": "x-api-key"}
    assert schemes["BearerAuth"]["scheme"] == "bearer"
    request = spec["components"]["schemas"]["MessagesRequest"]["properties"]
    for field in ("model", "max_tokens", "messages", "system", "tools", "tool_choice", "stop_sequences", "stream",
                  "metadata", "thinking"):
        assert field in request, field
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if not status.startswith("2"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, method, status)


def test_openapi_document_passes_the_spec_validator() -> None:
    import openapi_spec_validator as validator

    validator.validate(_openapi())


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_every_route_is_described_in_openapi(fuzz_server: RunningServer) -> None:
    """A route added to the app without its OpenAPI entry fails here."""
    spec = _openapi()
    described = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    missing = []
    for rule in fuzz_server.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue  # Flask's implicit static route: see test_no_static_file_route
        for method in sorted(rule.methods - {"OPTIONS"}):
            implicit_head = method == "HEAD" and "GET" in rule.methods and rule.rule != "/"
            if not implicit_head and (_openapi_path(rule.rule), method) not in described:
                missing.append(f"{method} {rule.rule}")
    assert not missing, f"routes missing from pensieve_server/openapi.json: {missing}"
    routes = {_openapi_path(rule.rule) for rule in fuzz_server.app.url_map.iter_rules()}
    assert "/openapi.json" in routes
    assert set(spec["paths"]) <= routes, f"described but not served: {set(spec['paths']) - routes}"


def test_no_static_file_route(fuzz_server: RunningServer) -> None:
    """The API serves no files; an implicit static route is surface nobody asked for."""
    assert "static" not in {rule.endpoint for rule in fuzz_server.app.url_map.iter_rules()}


def test_static_route_cannot_read_files(fuzz_server: RunningServer) -> None:
    """Meanwhile the implicit route needs the token and cannot climb out of its (missing) folder."""
    assert_anthropic_error(httpx.get(fuzz_server.base_url + "/static/openapi.json", timeout=10), 401)
    for path in ("/static/../openapi.json", "/static/..%2fopenapi.json", "/static/%2e%2e/app.py",
                 "/static//etc/passwd", "/static/..%5c..%5capp.py", "/static/../../pensieve_server/app.py"):
        status, _, body = raw_http(fuzz_server.base_url, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                         f"x-api-key: {fuzz_server.token}")
        assert status in (404, 308), (path, body[:200])  # 308: see test_doubled_slashes_get_anthropic_answers
        assert b"openapi" not in body and b"root:" not in body and b"create_app" not in body


def test_doubled_slashes_get_anthropic_answers(fuzz_server: RunningServer) -> None:
    """Every answer is JSON in Anthropic's shape, also for a path with a doubled slash."""
    for method, path in (("GET", "/v1//models"), ("POST", "/v1//messages")):
        status, headers, body = raw_http(fuzz_server.base_url, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                               f"x-api-key: {fuzz_server.token}\r\n"
                                                               "Content-Length: 0")
        assert status != 308 and headers["content-type"].startswith("application/json"), (status, body[:200])


def test_openapi_is_served_publicly(fuzz_server: RunningServer) -> None:
    response = httpx.get(fuzz_server.base_url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == _openapi()


# -- schemathesis against the description ---------------------------------------------------------

SCHEMATHESIS_EXAMPLES = env_int("PENSIEVE_SCHEMATHESIS_EXAMPLES", 40)


def test_schemathesis_conformance(fuzz_server: RunningServer) -> None:
    """Schema-driven positive and negative cases for every operation: no 5xx, documented statuses,
    content types, headers and response bodies (SSE events included)."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_url(fuzz_server.base_url + "/openapi.json")
    headers = {"x-api-key": fuzz_server.token, "Authorization": f"Bearer {fuzz_server.token}"}
    statuses: set[int] = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in ("positive", "negative"):
            strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

            @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def check(case: Any) -> None:
                body = case.body
                if isinstance(body, dict) and isinstance(body.get("model"), str):
                    model = body["model"]
                    # Two thirds of cases reach the model; and see test_lone_surrogate_in_model_name_streams.
                    if len(model) % 3 or not model.isascii():
                        body["model"] = "scripted"
                response = case.call(base_url=fuzz_server.base_url, headers=headers, timeout=30)
                statuses.add(response.status_code)
                case.validate_response(response, checks=checks)

            try:
                check()
            except Unsatisfiable:
                assert mode == "negative"  # nothing to break in an operation without inputs
    assert 200 in statuses and statuses <= {200} | CLIENT_ERROR_STATUSES, statuses
    assert_still_serving(fuzz_server)
