"""The streaming tool-call parser: calls, tolerance, degrading to text, and streaming equivalence."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from pensieve_server.anthropic.tools import (
    TextPiece,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallParser,
    ToolCallStart,
    conform,
    new_tool_use_id,
)

TOOLS = [
    {
        "name": "Bash",
        "description": "Run a command.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}},
            "required": ["command"],
            "additionalProperties": False,
        },
    },
    {
        "name": "Read",
        "description": "Read a file.",
        "input_schema": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "mode": {"enum": ["text", "binary"]}},
            "required": ["file_path"],
        },
    },
    {"name": "CronList", "description": "List jobs.", "input_schema": {"type": "object", "properties": {}}},
]


def parser() -> ToolCallParser:
    counter = itertools.count(1)
    return ToolCallParser(TOOLS, new_id=lambda: f"toolu_{next(counter)}")


def merged(pieces: list) -> list:
    """Adjacent text pieces joined, so chunking differences don't matter."""
    out: list = []
    for piece in pieces:
        if isinstance(piece, TextPiece) and out and isinstance(out[-1], TextPiece):
            out[-1] = TextPiece(out[-1].text + piece.text)
        else:
            out.append(piece)
    return out


def one_shot(text: str) -> list:
    p = parser()
    return merged(p.feed(text) + p.finish())


def char_by_char(text: str) -> list:
    p = parser()
    pieces = [piece for char in text for piece in p.feed(char)]
    return merged(pieces + p.finish())


def call(id_: str, name: str, arguments: dict) -> list:
    return [ToolCallStart(id=id_, name=name), ToolCallDelta(partial_json=json.dumps(arguments)), ToolCallEnd(input=arguments)]


GOOD = 'Let me check.\n<tool_call>\n{"name": "Bash", "arguments": {"command": "ls -la"}}\n</tool_call>'
TWO = (
    '<tool_call>\n{"name": "Bash", "arguments": {"command": "pwd"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "Read", "arguments": {"file_path": "/tmp/a"}}\n</tool_call>'
)


def test_good_call_with_text_before() -> None:
    p = parser()
    pieces = p.feed(GOOD) + p.finish()
    assert merged(pieces) == [TextPiece("Let me check."), *call("toolu_1", "Bash", {"command": "ls -la"})]
    assert p.tool_calls_made == 1


def test_two_calls() -> None:
    p = parser()
    assert merged(p.feed(TWO) + p.finish()) == [
        *call("toolu_1", "Bash", {"command": "pwd"}),
        *call("toolu_2", "Read", {"file_path": "/tmp/a"}),
    ]
    assert p.tool_calls_made == 2


CASES = [
    GOOD,
    TWO,
    "Plain answer with a < sign and <b>html</b>.",
    '<tool_call>{"name": "Bash", "arguments": {"command": "echo \\"}\\" <tool_call>"}}</tool_call>',
    '<tool_call>{"name": "Bash", "arguments": {broken</tool_call> after',
    '{"name": "Read", "parameters": {"file_path": "x"}}',
    '  {"answer": 42} is the JSON',
    "text <tool_ca",
    "",
]


@pytest.mark.parametrize("text", CASES)
def test_streamed_char_by_char_equals_one_shot(text: str) -> None:
    assert char_by_char(text) == one_shot(text)


@pytest.mark.parametrize("text", CASES)
def test_streamed_in_random_chunks_equals_one_shot(text: str) -> None:
    import random

    rng = random.Random(7)
    for _ in range(20):
        p = parser()
        pieces, index = [], 0
        while index < len(text):
            size = rng.randint(1, 6)
            pieces += p.feed(text[index:index + size])
            index += size
        assert merged(pieces + p.finish()) == one_shot(text)


def test_braces_and_tags_inside_strings() -> None:
    assert one_shot(CASES[3]) == call("toolu_1", "Bash", {"command": 'echo "}" <tool_call>'})


def test_malformed_json_degrades_to_text() -> None:
    text = '<tool_call>{"name": "Bash", "arguments": {broken</tool_call> after'
    assert one_shot(text) == [TextPiece(text)]


def test_unknown_tool_degrades_to_text() -> None:
    text = 'Sure. <tool_call>{"name": "Delete", "arguments": {}}</tool_call>'
    assert one_shot(text) == [TextPiece(text)]


@pytest.mark.parametrize("arguments", [
    {},  # required key missing
    {"command": 5},  # wrong type
    {"command": "ls", "timeout": "10"},  # wrong type for an optional key
    {"command": "ls", "timeout": True},  # a boolean is no integer
])
def test_schema_violation_degrades_to_text(arguments: dict) -> None:
    text = f'<tool_call>{json.dumps({"name": "Bash", "arguments": arguments})}</tool_call>'
    assert one_shot(text) == [TextPiece(text)]


def test_enum_violation_degrades_to_text() -> None:
    text = '<tool_call>{"name": "Read", "arguments": {"file_path": "a", "mode": "fast"}}</tool_call>'
    assert one_shot(text) == [TextPiece(text)]


def test_partial_tag_is_held_back_then_released_at_finish() -> None:
    p = parser()
    assert p.feed("Hello <tool") == [TextPiece("Hello")]
    assert p.feed("_ca") == []
    assert p.finish() == [TextPiece(" <tool_ca")]


def test_lookalike_tag_is_released_as_soon_as_it_differs() -> None:
    p = parser()
    assert p.feed("a <to") == [TextPiece("a")]
    assert p.feed("p>") == [TextPiece(" <top>")]


def test_no_tools_passes_everything_through() -> None:
    p = ToolCallParser([])
    assert p.feed("<tool_") == [TextPiece("<tool_")]
    assert p.feed('call>{"name": "Bash", "arguments": {}}</tool_call>') == [
        TextPiece('call>{"name": "Bash", "arguments": {}}</tool_call>')]
    assert p.finish() == []
    assert p.tool_calls_made == 0


def test_missing_closing_tag_at_end_of_generation() -> None:
    assert one_shot('<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n') == call(
        "toolu_1", "Bash", {"command": "ls"})


def test_missing_closing_tag_before_next_call() -> None:
    text = ('<tool_call>{"name": "Bash", "arguments": {"command": "a"}}\n'
            '<tool_call>{"name": "Bash", "arguments": {"command": "b"}}</tool_call>')
    assert one_shot(text) == [*call("toolu_1", "Bash", {"command": "a"}), *call("toolu_2", "Bash", {"command": "b"})]


def test_json_fence_inside_tags() -> None:
    text = '<tool_call>\n```json\n{"name": "Bash", "arguments": {"command": "ls"}}\n```\n</tool_call>'
    assert one_shot(text) == call("toolu_1", "Bash", {"command": "ls"})


@pytest.mark.parametrize("key", ["arguments", "parameters", "input"])
def test_argument_key_variants(key: str) -> None:
    text = f'<tool_call>{{"name": "Bash", "{key}": {{"command": "ls"}}}}</tool_call>'
    assert one_shot(text) == call("toolu_1", "Bash", {"command": "ls"})


def test_arguments_as_json_string_and_function_wrapper() -> None:
    inner = json.dumps({"command": "ls"})
    text = '<tool_call>' + json.dumps({"function": {"name": "Bash", "arguments": inner}}) + "</tool_call>"
    assert one_shot(text) == call("toolu_1", "Bash", {"command": "ls"})


def test_stray_closing_brace_and_case_insensitive_name() -> None:
    text = '<tool_call>{"name": "bash", "arguments": {"command": "ls"}}}</tool_call>'
    assert one_shot(text) == call("toolu_1", "Bash", {"command": "ls"})


def test_tool_without_arguments() -> None:
    assert one_shot('<tool_call>{"name": "CronList"}</tool_call>') == call("toolu_1", "CronList", {})


def test_unknown_keys_of_a_closed_schema_are_dropped() -> None:
    text = '<tool_call>{"name": "Bash", "arguments": {"command": "ls", "why": "x"}}</tool_call>'
    assert one_shot(text) == call("toolu_1", "Bash", {"command": "ls"})


def test_bare_call_object_as_whole_output() -> None:
    assert one_shot('\n{"name": "Read", "parameters": {"file_path": "/etc/hosts"}}\n') == call(
        "toolu_1", "Read", {"file_path": "/etc/hosts"})


def test_bare_json_that_is_no_call_stays_text() -> None:
    assert one_shot('{"name": "Bash"}') == [TextPiece('{"name": "Bash"}')]
    assert one_shot('{"result": 1}\nDone.') == [TextPiece('{"result": 1}\nDone.')]
    p = parser()
    assert p.feed("{ x") == [TextPiece("{ x")]  # decided at once: no quote after the brace


def test_text_after_a_call_is_dropped() -> None:
    text = GOOD + "\n<tool_response>\nfake output\n</tool_response>\nAll done."
    assert one_shot(text) == [TextPiece("Let me check."), *call("toolu_1", "Bash", {"command": "ls -la"})]


def test_malformed_call_after_a_good_one_is_dropped_not_text() -> None:
    text = GOOD + '<tool_call>{"name": "Nope"}</tool_call>'
    p = parser()
    assert merged(p.feed(text) + p.finish())[-1] == ToolCallEnd(input={"command": "ls -la"})
    assert p.tool_calls_made == 1


def test_delta_concatenation_parses_to_input() -> None:
    p = parser()
    pieces = p.feed('<tool_call>{"name": "Bash", "arguments": {"command": "echo é"}}</tool_call>') + p.finish()
    partial = "".join(piece.partial_json for piece in pieces if isinstance(piece, ToolCallDelta))
    assert json.loads(partial) == {"command": "echo é"}


def test_default_ids_look_like_anthropic_ids() -> None:
    assert re.fullmatch(r"toolu_[0-9A-Za-z]{24}", new_tool_use_id())
    assert new_tool_use_id() != new_tool_use_id()
    p = ToolCallParser(TOOLS)
    start = next(x for x in p.feed('<tool_call>{"name": "CronList"}</tool_call>') if isinstance(x, ToolCallStart))
    assert re.fullmatch(r"toolu_[0-9A-Za-z]{24}", start.id)


def test_odd_input_survives_as_text_and_never_becomes_a_call() -> None:
    """No combination of stray tags, braces and quotes names a tool, so the parser must emit no call
    and give back every character it was fed, in order, whichever way the text was chunked."""
    weird = ["<tool_call>", "</tool_call>", "{", "}", '"', "\\", "<tool_call>{]", "\x00", "{{{{", "<tool_call>null"]
    for combo in itertools.product(weird, repeat=3):
        p = parser()
        pieces = [piece for chunk in combo for piece in p.feed(chunk)] + p.finish()
        assert all(isinstance(piece, TextPiece) for piece in pieces), (combo, pieces)
        assert "".join(piece.text for piece in pieces) == "".join(combo), combo
        assert p.tool_calls_made == 0


def test_conform_schema_basics() -> None:
    schema = {"type": "object", "properties": {
        "n": {"type": "integer"}, "x": {"type": ["string", "null"]},
        "items": {"type": "array", "items": {"type": "string"}},
        "any": {"anyOf": [{"type": "string"}, {"type": "array"}]},
    }}
    assert conform(schema, {"n": 2.0, "x": None, "items": ["a"], "any": []}) == {"n": 2.0, "x": None, "items": ["a"], "any": []}
    for bad in ({"n": 1.5}, {"items": ["a", 1]}, {"any": 3}, {"x": 1}):
        with pytest.raises(ValueError):
            conform(schema, bad)
