"""Hostile text against the real embedded model on llama.cpp, end to end (issue 22).

The fuzz tests run a scripted model for speed; here a handful of the same bodies go through the
real tokenizer: lone surrogates are a 400 naming the field (they used to be a 500 from llama.cpp's
UTF-8 encoding), while NULs, noncharacters and long strings are answered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import llama_cpp  # noqa: F401 - the real engine is required: a missing one must fail, not skip
import pytest

from tests.security import assert_anthropic_error, assert_message, assert_stream
from tests.serverutil import RunningServer, embedded_llamacpp_server

pytestmark = pytest.mark.slow

TOOL = {"name": "look", "description": "Look at a path.",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}], **fields}


def with_text(text: str) -> dict[str, Any]:
    """``text`` in the system prompt, a user turn, a tool description, a tool round trip and metadata."""
    return body(
        system=[{"type": "text", "text": f"System {text}"}],
        tools=[{**TOOL, "description": f"Look {text}"}],
        metadata={"user_id": text},
        stop_sequences=[f"{text}!"],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": f"Look at {text}"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "look",
                                               "input": {"path": text}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": text}]},
        ],
    )


SURROGATE_BODIES = [  # (body, the field the 400 must name)
    (body(messages=[{"role": "user", "content": "\ud800"}]), "messages.0.content"),
    (body(system="\ud800"), "system"),
    (body(tools=[{**TOOL, "description": "a\udfff"}]), "tools.0.description"),
    (body(tools=[{**TOOL, "input_schema": {"type": "object", "properties": {"p": {"enum": ["\ud83d"]}}}}]),
     "tools.0.input_schema.properties.p.enum.0"),
    (with_text("x") | {"metadata": {"user_id": "\udc00"}}, "metadata.user_id"),
    (body(stop_sequences=["ok", "\ud800"]), "stop_sequences.1"),
]
ODD_TEXT = "a\x00b \uffff\ufffe\ufdd0\U0010ffff \ufeff\u202e\U0001f600"  # NUL, noncharacters, BOM, bidi, emoji


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with embedded_llamacpp_server(tmp_path_factory.mktemp("pensieve-home")) as running:
        yield running


@pytest.fixture
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info or record.levelno >= logging.ERROR:
                records.append(record)

    handler = Catch(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.mark.parametrize(("hostile", "field"), SURROGATE_BODIES, ids=[field for _, field in SURROGATE_BODIES])
def test_lone_surrogates_are_refused_by_both_routes(server: RunningServer, errors_logged: list[logging.LogRecord],
                                                    hostile: dict[str, Any], field: str) -> None:
    with server.client(timeout=120) as http:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            for stream in (False, True):
                response = http.post(path, content=json.dumps({**hostile, "stream": stream}).encode(),
                                     headers={"content-type": "application/json"})
                message = assert_anthropic_error(response, 400, "invalid_request_error")["error"]["message"]
                assert message.startswith(f"{field}: The request body is not valid JSON: "), message
    assert not errors_logged, [record.getMessage() for record in errors_logged]


def test_odd_valid_unicode_is_answered_and_counted(server: RunningServer,
                                                   errors_logged: list[logging.LogRecord]) -> None:
    """Answered (streamed and not), and the prompt the model read is the one count_tokens counts."""
    hostile = with_text(ODD_TEXT)
    with server.client(timeout=300) as http:
        counted = http.post("/v1/messages/count_tokens", json=hostile)
        assert counted.status_code == 200, counted.text[:500]
        answered = http.post("/v1/messages", json=hostile)
        assert answered.status_code == 200, answered.text[:500]
        message = answered.json()
        assert_message(message)
        usage = message["usage"]
        assert usage["input_tokens"] + usage["cache_read_input_tokens"] == counted.json()["input_tokens"]
        streamed = http.post("/v1/messages", json={**hostile, "stream": True})
        assert streamed.status_code == 200
        assert assert_stream(streamed.text)[-1][0] == "message_stop"
        empty = http.post("/v1/messages/count_tokens", json=with_text(""))
        assert counted.json()["input_tokens"] > empty.json()["input_tokens"]  # the odd text was not dropped
    assert not errors_logged, [record.getMessage() for record in errors_logged]


def test_very_long_strings_are_fitted_or_refused_never_a_5xx(server: RunningServer,
                                                             errors_logged: list[logging.LogRecord]) -> None:
    """Far more text than the model's context, in every field: context fitting or prompt-too-long, as for Claude."""
    with server.client(timeout=300) as http:
        for text in ("a\x00\uffff" * 30_000,):
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                response = http.post(path, json=with_text(text))
                if response.status_code != 200:
                    message = assert_anthropic_error(response, 400, "invalid_request_error")["error"]["message"]
                    assert "prompt is too long" in message, message
                elif path.endswith("count_tokens"):
                    assert response.json()["input_tokens"] > 30_000
                else:
                    assert_message(response.json())
    assert not errors_logged, [record.getMessage() for record in errors_logged]
