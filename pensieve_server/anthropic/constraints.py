"""What a request's output must look like, as a grammar for constrained decoding (engine/constraint.py).

- ``tool_choice`` any / tool: from the first token, one or more Hermes calls (exactly the format
  render.py shows and tools.py parses) naming a known tool, arguments valid for its ``input_schema``;
  at most one call with ``disable_parallel_tool_use``.
- ``auto``: free text; once the model writes ``<tool_call>`` the rest of that call is constrained
  (lazy trigger), then the text is free again (or, with parallel calls disabled, the answer ends).
- ``none``: no tools are offered or parsed, nothing is constrained.
- ``output_config.format`` json_schema (without forced tools): the whole answer is one JSON value.

JSON schemas are compiled by llguidance (the grammar library, no model involved). A tool whose schema
uses what it cannot express is retried leniently (unknown keywords ignored), then as any JSON object,
with one log line: that tool's arguments are then checked after generation, as before.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.engine.base import Constraint

log = logging.getLogger(__name__)

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
THINK_CLOSE = "</think>"
# The JSON spelling of render.py's prompts, so constrained calls look like the ones in the history.
JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


def _literal(text: str) -> str:
    """A Lark string literal (JSON escaping is what llguidance's Lark reads)."""
    return json.dumps(text, ensure_ascii=False)


def _json_rule(schema: dict[str, Any], options: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": {**JSON_STYLE, **options}}, ensure_ascii=False)


@lru_cache(maxsize=512)
def _schema_rule(schema_text: str, label: str) -> str | None:
    """``%json`` for the schema, strict, else lenient, else any object (logged); None without llguidance."""
    try:
        from llguidance import LLMatcher
    except ImportError:
        log.warning("llguidance is not installed: output is checked after generation only")
        return None
    schema = json.loads(schema_text)
    if not isinstance(schema, dict):
        schema = {}
    errors = []
    for options in ({}, {"lenient": True}):
        rule = _json_rule(schema, options)
        error = LLMatcher.validate_grammar(f"start: {rule}")
        if not error:
            if options:
                log.info("%s: schema partly beyond the grammar library (%s); unknown keywords are checked "
                         "after generation", label, errors[0][:200])
            return rule
        errors.append(error.splitlines()[0])
    log.info("%s: schema beyond the grammar library (%s); any JSON object is allowed and checked after "
             "generation", label, errors[-1][:200])
    return _json_rule({"type": "object"}, {})


def _call_body(tool: dict[str, Any]) -> str | None:
    name = tool["name"]
    schema = tool.get("input_schema") or {"type": "object"}
    rule = _schema_rule(json.dumps(schema, ensure_ascii=False), f"tool {name}")  # key order kept: it is enforced
    if rule is None:
        return None
    prefix = '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
    return f'{_literal(prefix)} {rule} {_literal("}")}'


def _bodies(tools: list[dict[str, Any]]) -> list[str] | None:
    rules = []
    for index, tool in enumerate(tools):
        body = _call_body(tool)
        if body is None:
            return None
        rules.append(f"body_{index}: {body}")
    return rules


def tool_call_constraint(tools: list[dict[str, Any]], tool_choice: dict[str, Any] | None) -> Constraint | None:
    """The grammar for tool calls under ``tool_choice`` (None: nothing to constrain)."""
    choice = tool_choice or {"type": "auto"}
    kind = choice.get("type", "auto")
    if kind == "none" or not tools:
        return None
    if kind == "tool":
        tools = [tool for tool in tools if tool["name"] == choice.get("name")]
        if not tools:
            return None
    bodies = _bodies(tools)
    if bodies is None:
        return None
    alternatives = " | ".join(f"body_{index}" for index in range(len(bodies)))
    single = bool(choice.get("disable_parallel_tool_use"))
    rules = [f"body: {alternatives}", *bodies]
    if kind in ("any", "tool"):
        call = f"call: {_literal(TOOL_OPEN + chr(10))} body {_literal(chr(10) + TOOL_CLOSE)}"
        start = "start: call" if single else f"start: call ({_literal(chr(10))} call)*"
        return Constraint("\n".join([start, call, *rules]))
    # auto: constrained from just after the model's own <tool_call>
    start = f"start: WS body WS {_literal(TOOL_CLOSE)}"
    ws = "WS: /[ \\t\\r\\n]{0,3}/"
    return Constraint("\n".join([start, ws, *rules]), trigger=TOOL_OPEN, rearm=not single)


def json_output_constraint(output_format: dict[str, Any] | None) -> Constraint | None:
    """``output_config.format`` ``{"type": "json_schema", "schema": {...}}`` as a grammar."""
    if not output_format or output_format.get("type") != "json_schema":
        return None
    schema = output_format.get("schema")
    if not isinstance(schema, dict):
        return None
    rule = _schema_rule(json.dumps(schema, ensure_ascii=False), "output_config.format")
    return None if rule is None else Constraint(f"start: {rule}")


def after_reasoning(constraint: Constraint) -> Constraint:
    """A from-the-start constraint that waits for the end of the model's ``<think>`` reasoning."""
    if constraint.trigger:
        return constraint
    inner = constraint.grammar.replace("start:", "answer:", 1)
    return Constraint(f"start: LEAD answer\nLEAD: /[ \\t\\r\\n]{{0,4}}/\n{inner}", trigger=THINK_CLOSE)


def request_constraint(request: MessagesRequest, *, after_thinking: bool = False) -> Constraint | None:
    """The one constraint for ``request``: forced tool calls win, then a JSON format, then lazy tool calls.

    ``after_thinking``: a reasoning model thinks first, so a from-the-start grammar waits for ``</think>``.
    """
    choice = (request.tool_choice or {}).get("type", "auto")
    tools = request.tools if choice != "none" else []
    if tools and choice in ("any", "tool"):
        found = tool_call_constraint(tools, request.tool_choice)
    else:
        found = json_output_constraint(request.output_format) or tool_call_constraint(tools, request.tool_choice)
    return after_reasoning(found) if found is not None and after_thinking else found
