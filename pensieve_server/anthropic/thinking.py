"""Reasoning models' ``<think>…</think>`` → Anthropic thinking blocks, and the thinking setting → template.

A reasoning model (Qwen3, DeepSeek-R1 distills…) writes its reasoning between ``<think>`` and
``</think>`` before the answer; some templates open the tag in the prompt already. The splitter turns
that into thinking pieces, so ``<think>`` text never reaches a text block; the request's ``thinking``
setting decides whether they are shown (as ``thinking`` blocks with Pensieve's own signature) or
dropped. Thinking blocks sent back in later turns go to the template as ``reasoning_content``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

OPEN = "<think>"
CLOSE = "</think>"
SIGNATURE_PREFIX = "pensieve-"


@dataclass(frozen=True)
class ThinkingPiece:
    text: str


def is_reasoning_template(template: str) -> bool:
    """Whether a chat template knows about reasoning (``<think>`` or ``enable_thinking``)."""
    return OPEN in template or "enable_thinking" in template


def thinking_requested(thinking: dict[str, Any] | None) -> bool:
    """``enabled`` and ``adaptive`` ask for reasoning; ``disabled`` and no setting do not."""
    return bool(thinking) and thinking.get("type") in ("enabled", "adaptive")


def template_options(thinking: dict[str, Any] | None, effort: str | None) -> dict[str, Any]:
    """Variables the chat template gets: ``enable_thinking`` (Qwen3 and others), ``reasoning_effort``."""
    options: dict[str, Any] = {"enable_thinking": thinking_requested(thinking)}
    if effort:
        options["reasoning_effort"] = effort
    return options


def signature(text: str) -> str:
    """Pensieve's opaque signature for a thinking block (a digest: it proves nothing, clients keep it)."""
    return SIGNATURE_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def opens_inside_thinking(prompt: str) -> bool:
    """True when the rendered prompt already opened ``<think>`` (the answer starts with reasoning)."""
    tail = prompt.rstrip()
    return tail.endswith(OPEN)


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkingSplitter:
    """Model text in; ThinkingPiece for reasoning and plain ``str`` for the answer out.

    Only a ``<think>`` at the very start of the answer (after whitespace) opens reasoning, so a model
    quoting the tag later in its answer is left alone; partial tags are held back until decided.
    """

    def __init__(self, *, inside: bool = False) -> None:
        self._state = "thinking" if inside else "start"
        self._buffer = ""

    def feed(self, text: str) -> list[ThinkingPiece | str]:
        self._buffer += text
        out: list[ThinkingPiece | str] = []
        while self._buffer:
            if self._state == "start":
                stripped = self._buffer.lstrip()
                if stripped.startswith(OPEN):
                    self._state, self._buffer = "thinking", stripped[len(OPEN):]
                    continue
                if not stripped or OPEN.startswith(stripped):
                    return out  # undecided: whitespace or part of the tag so far
                self._state = "answer"
            if self._state == "after":  # the answer after reasoning starts at its first non-blank text
                self._buffer = self._buffer.lstrip()
                if not self._buffer:
                    return out
                self._state = "answer"
            if self._state == "answer":
                out.append(self._buffer)
                self._buffer = ""
                return out
            end = self._buffer.find(CLOSE)
            if end >= 0:
                if end:
                    out.append(ThinkingPiece(self._buffer[:end]))
                self._state, self._buffer = "after", self._buffer[end + len(CLOSE):]
                continue
            hold = _partial_tag(self._buffer, CLOSE)
            cut = len(self._buffer) - hold
            if cut:
                out.append(ThinkingPiece(self._buffer[:cut]))
            self._buffer = self._buffer[cut:]
            return out
        return out

    def finish(self) -> list[ThinkingPiece | str]:
        """What is still held: unfinished reasoning stays reasoning, anything else is answer text."""
        rest, self._buffer = self._buffer, ""
        if not rest:
            return []
        if self._state == "thinking":
            return [ThinkingPiece(rest)]
        return [rest] if rest.strip() else []


class OutputReader:
    """Model text → thinking pieces (when the request asked for them) and tool-call parser pieces.

    ``split`` (a reasoning template): ``<think>`` is taken out of the answer whatever the setting;
    ``show``: the reasoning becomes thinking blocks, otherwise it is dropped.
    """

    def __init__(self, tools: list[dict[str, Any]], *, split: bool, show: bool, inside: bool = False) -> None:
        from pensieve_server.anthropic.tools import ToolCallParser

        self.parser = ToolCallParser(tools)
        self._splitter = ThinkingSplitter(inside=inside) if split else None
        self._show = show

    def _pieces(self, items: list[ThinkingPiece | str], final: bool) -> list[Any]:
        out: list[Any] = []
        for item in items:
            if isinstance(item, ThinkingPiece):
                if self._show:
                    out.append(item)
            else:
                out.extend(self.parser.feed(item))
        if final:
            out.extend(self.parser.finish())
        return out

    def feed(self, text: str) -> list[Any]:
        if self._splitter is None:
            return self.parser.feed(text)
        return self._pieces(self._splitter.feed(text), final=False)

    def finish(self) -> list[Any]:
        if self._splitter is None:
            return self.parser.finish()
        return self._pieces(self._splitter.finish(), final=True)
