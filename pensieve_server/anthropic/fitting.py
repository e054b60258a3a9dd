"""Fit a request into the model's context window, deterministically and prefix-stably.

Claude Code sends ≈21k tokens (tools ≈18k) while small local models have 8k. Under the ``fit`` and
``auto`` policies (identical here: a request that already fits is left alone) these steps apply in
order until the prompt plus room for the answer fits:

1. compact tool descriptions to their first line/sentence;
2. drop annotations (descriptions, titles, examples, ``$schema``) inside tools' input schemas;
3. trim the longest system texts (top-level blocks and inline ``role: "system"`` items) to one
   level of a fixed ladder of lengths, keeping the head and adding a marker;
4. drop the oldest turns after the first user turn (the task), in whole tool_use/tool_result
   pairs, keeping user/assistant alternation and the last user turn;
5. otherwise raise ``PromptTooLong``.

Every step depends only on the blocks it changes and on the context length, never on the size of
the newest turns (no binary search on the tail): the next turn of the same conversation fits its
earlier turns the same way, so its prompt extends the previous one and the prefix cache hits.
Whether a step runs at all depends on the whole request (one that fits is left alone), so steps 1
and 2, and the start of trimming, each change a conversation's prompt once, on the turn it first
outgrows the window (with Claude Code at 8k: the first request already).

Step 3's level is chosen from the conversation's fixed part alone: system, tools and the messages
up to the first user turn, the part step 4 never drops (see ``stable_trim_level``). A conversation
that grows therefore keeps the same trimmed system text, and only step 4 absorbs the growth, in
drops of whole ``context_length // 8``-token quanta, so the prefix changes only when a conversation
crosses one of those thresholds, and then after the system text and tools. (Choosing the first
level at which the whole request fits instead moved the system text a level down as turns were
added, which broke the cache inside the system prompt: a cold prefill of the whole window.) Only
when the newest turns can't fit at that level even after dropping are later levels tried.

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
    """Character caps, least aggressive first: about 1/2, 1/4 and 1/8 of the context at ≈4 characters
    a token."""
    return [max(256, context_length * 2), max(256, context_length), max(256, context_length // 2)]


def turns_reserve(context_length: int) -> int:
    """Tokens the fixed part must leave for later turns when step 3 picks its level: two drop quanta,
    one for the recent turns kept after a drop and one for the newest exchange (which step 4 can
    never drop). Less would leave a big tool result no room at the chosen level, so fitting would
    fall to a later level for that turn (a cache miss, twice); more trims the system text harder than
    the turns need."""
    return 2 * max(1, context_length // 8)


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


def trim_system(request: MessagesRequest, limit: int | None) -> tuple[MessagesRequest, int]:
    """``request`` with every system text longer than ``limit`` characters trimmed; how many were.
    ``None`` trims nothing."""
    if limit is None:
        return request, 0
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


def fixed_part(request: MessagesRequest) -> MessagesRequest:
    """``request`` up to its first user turn (the task): what step 4 never drops and later turns
    never change. Inline system items before that turn belong to it; those after it (Claude Code puts
    its agent list right after the task) don't: step 4 drops them with the first turns it drops, and
    system items further on arrive with the turns that grow the conversation."""
    first = next((i for i, m in enumerate(request.messages) if m.get("role") == "user"), None)
    return request if first is None else request.replace(messages=request.messages[: first + 1])


def stable_trim_level(request: MessagesRequest, count: CountTokens, context_length: int,
                      room: int) -> int:
    """Index into ``[None, *system_trim_levels(context_length)]`` of the least aggressive level at
    which the fixed part plus the answer room leaves ``turns_reserve`` tokens for the turns (the most
    aggressive level when none does).

    It reads the fixed part only, so every turn of a conversation gets the same level: the trimmed
    system text, and with it the cached prefix, survive the conversation's growth, and dropping old
    turns (which keeps system, tools and task cached) absorbs it. The least aggressive such level
    keeps as much of the system prompt as leaves the turns their reserve; a level fitting the whole
    request would be more generous on a short conversation but would have to move as it grows.
    """
    fixed = fixed_part(request)
    limits = [None, *system_trim_levels(context_length)]
    target = context_length - room - turns_reserve(context_length)
    for index, limit in enumerate(limits):
        if count(trim_system(fixed, limit)[0]) <= target:
            return index
    return len(limits) - 1


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

    # Steps 3 and 4: the level chosen from the fixed part, dropping turns at it; later levels only when
    # this request can't fit at it, and (trimming less rarely helps) earlier ones without dropping.
    limits: list[int | None] = [None, *system_trim_levels(context_length)]
    start = stable_trim_level(current, count_tokens, context_length, room)
    quantum = max(1, context_length // 8)
    smallest, tried = current_tokens, []
    for index in [*range(start, len(limits)), *reversed(range(start))]:
        trimmed, changed = trim_system(current, limits[index])
        if trimmed in tried:
            continue  # this level trims nothing more than one already tried
        tried.append(trimmed)
        steps = [*actions, f"trimmed {_plural(changed, 'system text')} to {limits[index]} characters"] \
            if changed else actions
        trimmed_tokens = count_tokens(trimmed) if changed else current_tokens
        smallest = min(smallest, trimmed_tokens)
        if trimmed_tokens <= budget:
            return done(trimmed, trimmed_tokens, steps)
        dropped = _fit_by_dropping(trimmed, count_tokens, trimmed_tokens, budget, quantum) \
            if index >= start else None
        if dropped is not None:
            fitted, fitted_tokens, messages = dropped
            return done(fitted, fitted_tokens, [*steps, f"dropped {_plural(messages, 'old message')}"])

    raise PromptTooLong(max(tokens, smallest + room), context_length)
