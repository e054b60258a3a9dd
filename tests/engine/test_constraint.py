"""Constrained decoding with llguidance over a byte-level vocabulary: grammar properties, lazy trigger, fallback.

The vocabulary is 256 single-byte tokens plus an end token, so a random walk through the allowed
tokens explores what the grammar permits; the outputs are then read by Pensieve's own tool parser.
"""

from __future__ import annotations

import json
import logging
import random
import threading

import numpy as np
import pytest
from llguidance import LLTokenizer, TokenizerWrapper

from pensieve_server.anthropic.constraints import json_output_constraint, tool_call_constraint
from pensieve_server.anthropic.tools import ToolCallEnd, ToolCallParser, ToolCallStart, conform
from pensieve_server.engine.base import Constraint
from pensieve_server.engine.constraint import TokenGrammars
from tests.fixtures import CLAUDE_CODE_DIR

EOS = 256


class _Bytes:
    eos_token_id = EOS
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]
    special_token_ids = [EOS]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


def grammars() -> TokenGrammars:
    return TokenGrammars(lambda: LLTokenizer(TokenizerWrapper(_Bytes())), EOS + 1)


def claude_code_tools(*names: str) -> list[dict]:
    body = json.loads((CLAUDE_CODE_DIR / "interactive" / "002-POST-v1_messages.json").read_text())["body"]
    tools = {tool["name"]: tool for tool in body["tools"]}
    return [tools[name] for name in names] if names else list(tools.values())


# Punctuation first, so a walk closes strings and objects instead of wandering forever.
_CLOSERS = [ord(c) for c in '"}]\n<>/'] + [EOS]


def walk(run, seed: int, free_text: bytes = b"", limit: int = 3000) -> bytes:
    """Sample through the grammar: random allowed tokens, leaning towards closing ones as it grows."""
    rng = random.Random(seed)
    out = bytearray()
    for byte in free_text:
        assert run.allowed() is None  # free text is never masked
        run.accept(byte, bytes([byte]))
        out.append(byte)
    for step in range(limit):
        mask = run.allowed()
        assert mask is not None
        allowed = np.flatnonzero(mask)
        closers = [t for t in _CLOSERS if mask[t]]
        token = int(rng.choice(closers) if closers and rng.random() < min(0.9, step / 200) else rng.choice(allowed))
        if token == EOS:
            return bytes(out)
        run.accept(token, bytes([token]))
        out.extend([token])
    raise AssertionError("the walk did not finish")


def parse(tools: list[dict], text: str) -> list[tuple[str, dict]]:
    parser = ToolCallParser(tools)
    pieces = parser.feed(text) + parser.finish()
    names = [p.name for p in pieces if isinstance(p, ToolCallStart)]
    inputs = [p.input for p in pieces if isinstance(p, ToolCallEnd)]
    return list(zip(names, inputs, strict=True))


@pytest.mark.parametrize("seed", range(6))
def test_forced_calls_are_valid_calls_of_known_tools(seed: int) -> None:
    tools = claude_code_tools("Bash", "Read", "Edit", "Write")
    run = grammars().start(tool_call_constraint(tools, {"type": "any"}))
    text = walk(run, seed).decode()
    calls = parse(tools, text)
    assert calls and text.startswith("<tool_call>\n")
    schemas = {tool["name"]: tool["input_schema"] for tool in tools}
    for name, arguments in calls:
        assert conform(schemas[name], arguments) == arguments


@pytest.mark.parametrize("seed", range(4))
def test_disable_parallel_allows_exactly_one_call(seed: int) -> None:
    tools = claude_code_tools("Bash", "Read")
    run = grammars().start(tool_call_constraint(tools, {"type": "any", "disable_parallel_tool_use": True}))
    text = walk(run, seed).decode()
    assert text.count("<tool_call>") == 1 and text.endswith("</tool_call>")
    assert len(parse(tools, text)) == 1


def test_named_tool_choice_allows_only_that_tool() -> None:
    tools = claude_code_tools("Bash", "Read", "Write")
    run = grammars().start(tool_call_constraint(tools, {"type": "tool", "name": "Read"}))
    names = {name for seed in range(3) for name, _ in parse(tools, walk(grammars().start(
        tool_call_constraint(tools, {"type": "tool", "name": "Read"})), seed).decode())}
    assert names == {"Read"}
    assert run is not None


def test_auto_leaves_text_free_until_the_model_opens_a_call_then_frees_it_again() -> None:
    tools = claude_code_tools("Bash")
    constraint = tool_call_constraint(tools, {"type": "auto"})
    assert constraint is not None and constraint.trigger == "<tool_call>" and constraint.rearm
    run = grammars().start(constraint)
    rng = random.Random(1)
    prose = b"Let me look. <tool_call>"
    for byte in prose:
        assert run.allowed() is None
        run.accept(byte, bytes([byte]))
    mask = run.allowed()  # the call is open: constrained from here
    assert mask is not None and mask[ord("{")] and not mask[ord("x")]
    out = bytearray(prose)
    while run.active:
        allowed = np.flatnonzero(run.allowed())
        closers = [t for t in _CLOSERS if t in set(allowed.tolist())]
        token = int(rng.choice(closers) if closers and rng.random() < 0.8 else rng.choice(allowed))
        run.accept(token, bytes([token]))
        out.append(token)
    assert out.endswith(b"</tool_call>")
    assert run.allowed() is None  # free again after the call
    calls = parse(tools, out.decode())
    assert len(calls) == 1 and calls[0][0] == "Bash" and isinstance(calls[0][1]["command"], str)


def test_trigger_split_inside_a_token_keeps_the_rest_of_that_token() -> None:
    run = grammars().start(tool_call_constraint(claude_code_tools("Bash"), {"type": "auto"}))
    run.accept(1, b"ok <tool_")
    run.accept(2, b'call>\n{"na')  # the trigger ends inside this token; what follows is consumed
    mask = run.allowed()
    assert mask is not None and mask[ord("m")] and not mask[ord("x")]


def test_auto_without_parallel_calls_ends_after_the_first_call() -> None:
    run = grammars().start(tool_call_constraint(claude_code_tools("Bash"), {
        "type": "auto", "disable_parallel_tool_use": True}))
    for byte in b'<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n</tool_call>':
        run.accept(byte, bytes([byte]))
    mask = run.allowed()
    assert mask is not None and np.flatnonzero(mask).tolist() == [EOS]


def test_tool_choice_none_constrains_nothing() -> None:
    assert tool_call_constraint(claude_code_tools("Bash"), {"type": "none"}) is None
    assert tool_call_constraint([], {"type": "any"}) is None


@pytest.mark.parametrize("seed", range(4))
def test_json_format_output_parses_and_validates(seed: int) -> None:
    fixture = json.loads((CLAUDE_CODE_DIR / "interactive" / "003-POST-v1_messages.json").read_text())["body"]
    output_format = fixture["output_config"]["format"]
    run = grammars().start(json_output_constraint(output_format))
    value = json.loads(walk(run, seed))
    assert conform(output_format["schema"], value) == value and list(value) == ["title"]


def test_every_claude_code_tool_gets_a_grammar_and_unsupported_keywords_are_logged(caplog) -> None:
    tools = claude_code_tools()
    with caplog.at_level(logging.INFO):
        constraint = tool_call_constraint([{**t, "name": t["name"] + "_x"} for t in tools], {"type": "any"})
    assert constraint is not None
    assert grammars().start(constraint) is not None
    degraded = [r.getMessage() for r in caplog.records if "schema" in r.getMessage()]
    assert any("propertyNames" in message for message in degraded)


def test_a_grammar_that_does_not_compile_means_no_constraint(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert grammars().start(Constraint('start: %json {"type": "object", "$ref": "http://remote/x"}')) is None
    assert any("does not compile" in r.getMessage() for r in caplog.records)


def test_off_grammar_text_after_the_trigger_falls_back_to_checking_after() -> None:
    run = grammars().start(tool_call_constraint(claude_code_tools("Bash"), {"type": "auto"}))
    run.accept(1, b"<tool_call> hello")
    assert run.failed and run.allowed() is None


def test_a_vocabulary_llguidance_cannot_read_turns_constraints_off_once_not_per_request(caplog) -> None:
    """An llguidance older than 1.7 refused several end tokens: every request then paid the tokenizer
    build again (0.14 s on an H200 host) and logged it again."""
    calls: list[int] = []

    def broken() -> LLTokenizer:
        calls.append(1)
        raise TypeError("argument 'eos_token': 'list' object cannot be interpreted as an integer")

    model = TokenGrammars(broken, EOS + 1)
    constraint = tool_call_constraint(claude_code_tools("Read"), {"type": "any"})
    with caplog.at_level(logging.INFO, logger="pensieve_server.engine.constraint"):
        runs = [model.start(constraint) for _ in range(3)]
    assert runs == [None, None, None], "requests go on unconstrained"
    assert calls == [1], "built once"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "llguidance >= 1.7" in warnings[0].getMessage()


def test_the_tokenizer_is_built_in_the_background_and_a_request_meanwhile_waits_for_it() -> None:
    started, release, calls = threading.Event(), threading.Event(), []

    def slow() -> LLTokenizer:
        calls.append(1)
        started.set()
        release.wait(30)
        return LLTokenizer(TokenizerWrapper(_Bytes()))

    model = TokenGrammars(slow, EOS + 1)
    model.build_in_background()
    assert started.wait(30), "building before any request"
    runs: list = []
    request = threading.Thread(target=lambda: runs.append(model.start(tool_call_constraint(claude_code_tools("Read"), {"type": "any"}))))
    request.start()
    request.join(0.2)
    assert request.is_alive(), "the request waits for the build in flight"
    release.set()
    request.join(30)
    assert runs and runs[0] is not None and runs[0].allowed() is not None
    assert calls == [1], "one build, shared"
