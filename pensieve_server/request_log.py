"""One line per Messages request at ``info``: what was asked, what was reused, and where the time went.

``pensieve logs`` shows these lines, so a slow turn can be explained after the fact: a long queue
wait (another request held the model), a cold prefill (nothing reused), or context fitting. The line
holds names, counts, timings and reasons only, never prompt text or secrets; every value a client
chose (the model name) is cut short and stripped of anything that could forge another log line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pensieve_server.engine.base import Completion, PrefixMatch

log = logging.getLogger("pensieve_server.requests")

MAX_VALUE_CHARS = 120


def clean(value: object) -> str:
    """``value`` as one short token: printable characters only, quoted when it holds spaces."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))[:MAX_VALUE_CHARS]
    if not text or any(ch in text for ch in ' "='):
        return '"' + text.replace('"', "'") + '"'
    return text


@dataclass
class RequestLog:
    """The request's line, filled in as the request runs and written exactly once."""

    request_id: str
    model: str  # the name the client asked for
    local_model: str
    engine: str
    prompt_tokens: int | None = None
    fit_actions: list[str] = field(default_factory=list)
    prepare_s: float = 0.0  # before the model queue: loading, parsing, fitting, rendering, tokenizing
    match: PrefixMatch | None = None
    done: bool = False

    def _head(self) -> str:
        fields = [f"request {clean(self.request_id or 'req_none')}", f"model={clean(self.model)}",
                  f"local={clean(self.local_model)}", f"engine={clean(self.engine)}"]
        if self.prompt_tokens is not None:
            fields.append(f"prompt={self.prompt_tokens}")
        if self.match is not None:
            fields += [f"cached={self.match.cached_tokens}", f"disk={self.match.cached_from_disk}"]
        fields.append("fit=" + clean("; ".join(self.fit_actions) or "none"))
        return " ".join(fields)

    def matched(self, match: PrefixMatch) -> None:
        self.match = match

    def completed(self, completion: Completion) -> None:
        """The line of a request that ran to its end (any stop reason)."""
        if self.done:
            return
        self.done = True
        self.prompt_tokens = completion.input_tokens
        self.match = PrefixMatch(completion.cached_tokens, completion.cached_from_disk)
        timings = completion.timings
        log.info("%s prepare=%.2fs queue=%.2fs prefill=%.2fs ttft=%.2fs output=%d decode=%.1ftok/s stop=%s",
                 self._head(), self.prepare_s, timings.queued_s, timings.prefill_s, timings.ttft_s, completion.output_tokens,
                 completion.decode_tokens_per_s, clean(completion.stop_reason))

    def forwarded(self, usage: dict[str, Any], stop_reason: str | None) -> None:
        """The line of a request an upstream server answered (its usage, as it reported it)."""
        if self.done:
            return
        self.done = True
        fresh, cached = usage.get("input_tokens"), usage.get("cache_read_input_tokens") or 0
        if isinstance(fresh, int) and isinstance(cached, int):
            self.prompt_tokens, self.match = fresh + cached, PrefixMatch(cached)
        log.info("%s output=%s stop=%s", self._head(), clean(usage.get("output_tokens", "?")),
                 clean(stop_reason or "none"))

    def ended_early(self, outcome: str, reason: str) -> None:
        """The line of a request that failed or was cancelled: ``outcome`` and why, in a few words."""
        if self.done:
            return
        self.done = True
        log.info("%s %s: %s", self._head(), outcome, clean(reason))


def log_rejected(request_id: str, status: int, body: Any) -> None:
    """The line of a Messages request refused before it reached a model (bad input, 529 when full)."""
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type", "error") if isinstance(error, dict) else "error"
    message = error.get("message", "") if isinstance(error, dict) else ""
    log.info("request %s rejected: %d %s: %s", clean(request_id or "req_none"), status, clean(kind), clean(message))
