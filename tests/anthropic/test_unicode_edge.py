"""The one check for text that is not valid Unicode (issue 22): lone UTF-16 surrogates anywhere in a body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pensieve_server.anthropic.errors import InvalidRequest
from pensieve_server.anthropic.validate import (
    find_lone_surrogate,
    parse_count_tokens_request,
    parse_messages_request,
)

GOOD: dict[str, Any] = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def refusal(body: Any) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_messages_request(body)
    message = caught.value.message
    with pytest.raises(InvalidRequest) as counted:
        parse_count_tokens_request(body)
    assert counted.value.message == message
    return message


def test_an_escaped_lone_surrogate_is_refused_naming_the_field() -> None:
    body = json.loads('{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "a\\ud800"}]}')
    assert refusal(body) == ("messages.0.content: The request body is not valid JSON: no low surrogate in string "
                             "(U+D800 at character 1 is half of a UTF-16 surrogate pair, which is not valid Unicode)")
    assert "lone low surrogate in string" in refusal({**GOOD, "system": "\udfff"})


def test_raw_surrogate_bytes_are_refused_too() -> None:
    """Python's json decodes bytes with surrogatepass: raw ED A0 80 arrives as U+D800 as well."""
    raw = b'{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'
    assert refusal(json.loads(raw)).startswith("messages.0.content: The request body is not valid JSON")


def test_a_surrogate_pair_is_one_character_and_passes() -> None:
    body = json.loads('{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}')
    assert parse_messages_request(body).messages[0]["content"][0]["text"] == "\U0001f600"


def test_odd_but_valid_unicode_passes() -> None:
    text = "\x00\ufffe\uffff\ufdd0\U0010ffff\ufeff\u202e" + "x" * 100_000
    request = parse_messages_request({**GOOD, "system": text, "metadata": {"user_id": text}, "stop_sequences": [text]})
    assert request.system[0]["text"] == text and request.stop_sequences == [text]


def test_keys_and_unchecked_fields_count_and_the_message_stays_valid_text() -> None:
    """Fields the server otherwise ignores count too; a broken key is named with its escape, not the surrogate."""
    message = refusal({**GOOD, "output_config": {"a": [{"\ud800x": 1}]}})
    assert message.startswith("output_config.a.0.\\ud800x: The request body is not valid JSON")
    message.encode("utf-8")  # no lone surrogate in the error itself
    assert refusal({**GOOD, "unknown_field": ["ok", "\udc00"]}).startswith("unknown_field.1: ")


def test_the_first_surrogate_in_document_order_is_named() -> None:
    messages = [{"role": "user", "content": f"m{index}\ud800"} for index in range(3)]
    assert refusal({**GOOD, "messages": messages}).startswith("messages.0.content: ")


def test_depth_does_not_matter() -> None:
    """Nesting deeper than Python's recursion limit is walked without recursion."""
    deep: Any = "\ud800"
    for _ in range(5_000):
        deep = [deep]
    found = find_lone_surrogate({"x": deep})
    assert found is not None and found[0] == ("x", *[0] * 5_000)
    assert find_lone_surrogate({"x": [[["fine"]]], "y": {"z": "\U0001f600"}}) is None


def test_the_check_comes_before_any_other() -> None:
    """As the real API decodes first, a body with both problems gets the Unicode error."""
    assert refusal({"messages": "\ud800"}).startswith("messages: The request body is not valid JSON")
    assert refusal(["\ud800"]).startswith("0: The request body is not valid JSON")
