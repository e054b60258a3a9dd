"""Fit a request into the model's context window, deterministically and prefix-stably.

Claude Code sends ≈21k tokens (tools ≈18k) while small local models have 8k. Under the ``fit`` and
``auto`` policies (identical here: a request that already fits is left alone) these steps apply in
order until the prompt plus room for the answer fits:

1. compact tool descriptions to their first line/sentence;
2. drop annotations (descriptions, titles, examples, ``$schema``) inside tools' input schemas;
3. trim the longest system texts (top-level blocks and inline ``role: "system"`` items) to a
   fixed ladder of lengths, keeping the head and adding a marker;
4. drop the oldest turns after the first user turn (the task), in whole tool_use/tool_result
   pairs, keeping user/assistant alternation and the last user turn;
5. otherwise raise ``PromptTooLong``.

Every step depends only on the blocks it changes and on the context length, never on the size of
the newest turn (no binary search on the tail): the next turn of the same conversation fits its
earlier turns the same way, so its prompt extends the previous one and the prefix cache hits.
Steps 3 and 4 move in fixed quanta (ladder levels; drops in units of ``context_length // 8``
tokens), so the prefix changes only when a conversation crosses one of those thresholds.

The room kept for the answer is ``min(max_tokens, max(min_answer_tokens, context_length // 8),
context_length // 2)``: enough to finish a tool call or a short answer without starving the prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pensieve_server.anthropic.errors import PromptTooLong
from pensieve_server.anthropic.render import first_line
from pensieve_server.anthropic.types import MessagesRequest

POLICIES = ("auto", "fit", "strict")
TRIM_MARKER = "[… trimmed by Pensieve to fit the context …]"
DROPPED_NOTE = "[… earlier turns trimmed by Pensieve to fit the context …]"
_SCHEMA_ANNOTATIONS = frozenset({"description", "title", "examples", "$schema", "$comment"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})

CountTokens = Callable[[MessagesRequest], int]


@dataclass(frozen=True)
class FitResult:
    """The request to render, its prompt size, the capped max_tokens and what was changed."""

    request: MessagesRequest
    prompt_tokens: int
    max_tokens: int
    actions: list[str] = field(default_factory=list)


def answer_room(max_tokens: int, context_length: int, min_answer_tokens: int = 1024) -> int:
    """Tokens kept free for the answer while fitting (see the module docstring)."""
    return max(1, min(max_tokens, max(min_answer_tokens, context_length // 8), context_length // 2))


# -- steps 1 and 2: tools -------------------------------------------------------------------------------

def compact_tool_descriptions(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Tools with descriptions cut to their first line/sentence, and how many changed."""
    out, changed = [], 0
    for tool in tools:
        description = tool.get("description")
        if isinstance(description, str) and first_line(description) != description:
            tool = {**tool, "description": first_line(description)}
            changed += 1
        out.append(tool)
    return out, changed


def strip_schema_annotations(schema: Any) -> Any:
    """``schema`` without descriptions/titles/examples; property names, types, enums, required stay."""
    if isinstance(schema, list):
        return [strip_schema_annotations(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_ANNOTATIONS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strip_schema_annotations(sub) for name, sub in value.items()}
        elif key in ("enum", "const", "default", "required"):
            out[key] = value
        else:
            out[key] = strip_schema_annotations(value)
    return out


def strip_tool_schemas(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    out, changed = [], 0
    for tool in tools:
        schema = tool.get("input_schema")
        stripped = strip_schema_annotations(schema)
        if stripped != schema:
            tool = {**tool, "input_schema": stripped}
            changed += 1
        out.append(tool)
    return out, changed


# -- step 3: system texts ---------------------------------------------------------------------------

def system_trim_levels(context_length: int) -> list[int]:
    """Character caps tried in order: about 1/2, 1/4 and 1/8 of the context at ≈4 characters a token."""
    return [max(256, context_length * 2), max(256, context_length), max(256, context_length // 2)]


def trim_text(text: str, limit: int) -> str:
    """The head of ``text`` (cut at a line end near ``limit`` when there is one) and the marker."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    newline = head.rfind("\n")
    if newline >= limit * 4 // 5:
        head = head[:newline]
    return f"{head.rstrip()}\n{TRIM_MARKER}"


def _trim_blocks(blocks: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], int]:
    out, changed = [], 0
    for block in blocks:
        if block.get("type") == "text" and isinstance(block.get("text"), str) and len(block["text"]) > limit:
            block = {**block, "text": trim_text(block["text"], limit)}
            changed += 1
        out.append(block)
    return out, changed


def trim_system(request: MessagesRequest, limit: int) -> tuple[MessagesRequest, int]:
    """``request`` with every system text longer than ``limit`` characters trimmed; how many were."""
    system, changed = _trim_blocks(request.system, limit)
    messages = []
    for message in request.messages:
        if message.get("role") == "system":
            content = message.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            trimmed, count = _trim_blocks(blocks, limit)
            if count:
                message = {**message, "content": trimmed}
                changed += count
        messages.append(message)
    return request.replace(system=system, messages=messages), changed


# -- step 4: oldest turns ---------------------------------------------------------------------------

def _tool_ids(message: dict[str, Any], kind: str, key: str) -> list[str]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [block.get(key, "") for block in content if isinstance(block, dict) and block.get("type") == kind]


def drop_points(messages: list[dict[str, Any]]) -> tuple[int, list[int]]:
    """The first user turn and the indices ``i`` where ``messages[first+1:i]`` may be dropped.

    A drop point is an assistant turn before the last user turn such that the dropped range starts
    with an assistant turn and ends with a user turn (alternation holds around it) and no kept
    tool_result answers a dropped tool_use.
    """
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        return -1, []
    first, last_user = users[0], users[-1]
    answered_at: dict[str, int] = {}
    for index, message in enumerate(messages):
        for tool_use_id in _tool_ids(message, "tool_result", "tool_use_id"):
            answered_at.setdefault(tool_use_id, index)
    points: list[int] = []
    range_start_ok: bool | None = None  # first non-system role of the dropped range is assistant
    last_role = None  # last non-system role in the dropped range so far
    latest_answer = -1  # where the last answer to a dropped tool_use sits
    for index in range(first + 1, last_user):
        message = messages[index]
        role = message.get("role")
        if (role == "assistant" and range_start_ok and last_role == "user" and latest_answer < index):
            points.append(index)
        if role == "system":
            continue
        if range_start_ok is None:
            range_start_ok = role == "assistant"
        last_role = role
        for tool_use_id in _tool_ids(message, "tool_use", "id"):
            latest_answer = max(latest_answer, answered_at.get(tool_use_id, -1))
    return first, points


def _with_note(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
    return {**message, "content": [*blocks, {"type": "text", "text": DROPPED_NOTE}]}


def drop_turns(request: MessagesRequest, first: int, point: int) -> MessagesRequest:
    """``request`` without ``messages[first+1:point]``; the first user turn notes the gap."""
    messages = request.messages
    return request.replace(messages=[*messages[:first], _with_note(messages[first]), *messages[point:]])


def _fit_by_dropping(request: MessagesRequest, count: CountTokens, full: int, budget: int,
                     quantum: int) -> tuple[MessagesRequest, int, int] | None:
    """Drop whole chunks of old turns: the first drop point freeing ≥ j·quantum tokens, j minimal.

    A point's freed size (``full - count(dropped)``) doesn't depend on the turns after it, so a
    later turn picks the same point until it needs another quantum. Returns (request, tokens,
    messages dropped) or None.
    """
    first, points = drop_points(request.messages)
    if not points:
        return None
    sizes: dict[int, int] = {}

    def size(position: int) -> int:
        if position not in sizes:
            sizes[position] = count(drop_turns(request, first, points[position]))
        return sizes[position]

    target = max(1, math.ceil((full - budget) / quantum)) * quantum
    low = 0
    while True:
        lo, hi = low, len(points) - 1
        while lo < hi:  # first point freeing at least ``target`` (or the last point)
            mid = (lo + hi) // 2
            if full - size(mid) >= target:
                hi = mid
            else:
                lo = mid + 1
        if size(lo) <= budget:
            point = points[lo]
            return drop_turns(request, first, point), size(lo), point - first - 1
        if lo == len(points) - 1:
            return None
        low = lo + 1
        target = (math.floor((full - size(lo)) / quantum) + 1) * quantum


# -- the policy -------------------------------------------------------------------------------------

def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def fit_request(
    request: MessagesRequest,
    *,
    count_tokens: CountTokens,
    context_length: int,
    policy: str,
    min_answer_tokens: int = 1024,
) -> FitResult:
    """Make ``request`` fit ``context_length`` under ``policy`` ("strict", "fit" or "auto").

    ``count_tokens`` renders and tokenizes a request exactly as it will be sent to the engine.
    Raises PromptTooLong when it can't fit; ``max_tokens`` is capped to what the context leaves.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown context policy {policy!r} (expected one of {', '.join(POLICIES)})")
    tokens = count_tokens(request)

    def done(fitted: MessagesRequest, prompt: int, actions: list[str]) -> FitResult:
        max_tokens = max(1, min(request.max_tokens, context_length - prompt))
        return FitResult(fitted.replace(max_tokens=max_tokens), prompt, max_tokens, actions)

    if policy == "strict":
        if tokens + 1 > context_length:
            raise PromptTooLong(tokens, context_length)
        return done(request, tokens, [])

    room = answer_room(request.max_tokens, context_length, min_answer_tokens)
    budget = context_length - room
    if tokens <= budget:
        return done(request, tokens, [])

    actions: list[str] = []
    current, current_tokens = request, tokens

    tools, changed = compact_tool_descriptions(current.tools)
    if changed:
        current = current.replace(tools=tools)
        current_tokens = count_tokens(current)
        actions.append(f"compacted {_plural(changed, 'tool description')}")
        if current_tokens <= budget:
            return done(current, current_tokens, actions)

    tools, changed = strip_tool_schemas(current.tools)
    if changed:
        current = current.replace(tools=tools)
        current_tokens = count_tokens(current)
        actions.append(f"dropped parameter descriptions from {_plural(changed, 'tool')}")
        if current_tokens <= budget:
            return done(current, current_tokens, actions)

    base, trim_action = current, None
    for limit in system_trim_levels(context_length):
        trimmed, changed = trim_system(base, limit)
        if not changed:
            continue
        current, current_tokens = trimmed, count_tokens(trimmed)
        trim_action = f"trimmed {_plural(changed, 'system text')} to {limit} characters"
        if current_tokens <= budget:
            return done(current, current_tokens, [*actions, trim_action])
    if trim_action:
        actions.append(trim_action)

    dropped = _fit_by_dropping(current, count_tokens, current_tokens, budget, max(1, context_length // 8))
    if dropped is not None:
        fitted, fitted_tokens, messages = dropped
        actions.append(f"dropped {_plural(messages, 'old message')}")
        return done(fitted, fitted_tokens, actions)

    raise PromptTooLong(max(tokens, current_tokens + room), context_length)
