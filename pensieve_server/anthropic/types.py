"""A validated Messages request in one normal form, so later stages never re-check shapes.

Normal form: ``system`` is a list of text blocks; every message's ``content`` is a list of block
dicts; ``role: "system"`` items inside ``messages`` are kept in place (Claude Code >= 2.1.154).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class MessagesRequest:
    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    system: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: dict[str, Any] | None = None
    stop_sequences: list[str] = field(default_factory=list)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None  # output_config.format: {"type": "json_schema", "schema": {...}}
    effort: str | None = None  # output_config.effort ("low" … "high"), for templates that take reasoning_effort

    def replace(self, **changes: Any) -> MessagesRequest:
        return replace(self, **changes)
