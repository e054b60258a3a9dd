"""From a decoded request body to an answer and back: the Messages pipeline without Flask.

parse → map the model name → load → check → prepare (the provider: fit, render, tokenize) → submit
→ stream events. Whoever answers (see :mod:`pensieve_server.providers`), what every answer shares is
here, once: the ``max_tokens`` check, the context-window stop reason, metrics and the request log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from pensieve_server.anthropic.errors import ApiError, InvalidRequest
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.anthropic.validate import (
    is_server_tool,
    parse_count_tokens_request,
    parse_messages_request,
)
from pensieve_server.engine.base import Cancelled, Completion, PrefixMatch
from pensieve_server.metrics import Metrics
from pensieve_server.providers.base import Item, Prepared, Provider, Target
from pensieve_server.request_log import RequestLog
from pensieve_server.settings import Settings

log = logging.getLogger(__name__)


class MessagesService:
    def __init__(self, settings: Settings, provider: Provider, metrics: Metrics) -> None:
        self.settings = settings
        self.provider = provider
        self.metrics = metrics

    # -- preparing --------------------------------------------------------------------------------
    def prepare(self, body: Any) -> Prepared:
        started = time.perf_counter()
        request = _without_server_tools(parse_messages_request(
            body, max_messages=self.settings.max_messages, max_tools=self.settings.max_tools
        ))
        target = self.provider.load(request.model)
        self._check_max_tokens(request, target)
        prepared = self.provider.prepare(request, body, target)
        prepared.prepare_s = time.perf_counter() - started
        return prepared

    def _check_max_tokens(self, request: MessagesRequest, target: Target) -> None:
        """Under the strict policy a ``max_tokens`` beyond the context is the client's error, as upstream."""
        context = target.context_length
        if self.settings.context_policy == "strict" and 0 < context < request.max_tokens:
            raise InvalidRequest(f"max_tokens: {request.max_tokens} > {context}, which is the maximum allowed "
                                 f"for model {target.name}")

    def count_tokens(self, body: Any) -> int:
        request = _without_server_tools(parse_count_tokens_request(
            body, max_messages=self.settings.max_messages, max_tools=self.settings.max_tools
        ))
        return self.provider.count_tokens(request, body, self.provider.load(request.model))

    def submit(self, prepared: Prepared) -> Any:
        return self.provider.submit(prepared)

    # -- running ----------------------------------------------------------------------------------
    def events(self, prepared: Prepared, job: Any, ping_interval: float | None = None,
               request_id: str = "") -> Iterator[Item]:
        """Anthropic stream events for ``job``; None where a keepalive ping is due.

        ``message_start`` goes out as soon as the engine knows how much of the prompt it reuses
        (before prefill), so its usage carries the real input/cache split; pings may precede it
        while the request waits for the model. Raises ApiError for engine failures. Closing the
        iterator (client gone) cancels the job. Every request leaves one line in the request log.
        """
        target = prepared.target
        record = RequestLog(request_id, prepared.request.model, target.name, target.engine,
                            prepared.prompt_tokens, prepared.fit_actions, prepare_s=prepared.prepare_s)
        events = self.provider.events(prepared, job, ping_interval, _Outcome(prepared, self.metrics, record))
        try:
            yield from (_forwarded(events, record) if prepared.forwarded else events)
        except Cancelled as exc:
            record.ended_early("cancelled", str(exc))
        except ApiError as exc:
            record.ended_early("failed", f"{exc.error_type}: {exc.message}")
            raise
        finally:
            events.close()  # the job (or the upstream request) ends with the client's
            record.ended_early("cancelled", "the client went away")  # a no-op once the line is written


class _Outcome:
    """The shared end of every answer: the stop reason the client sees, metrics, the request log."""

    def __init__(self, prepared: Prepared, metrics: Metrics, record: RequestLog) -> None:
        self.prepared = prepared
        self.metrics = metrics
        self.record = record

    def matched(self, match: PrefixMatch) -> None:
        self.record.matched(match)

    def completed(self, completion: Completion) -> Completion:
        completion = _context_limited(completion, self.prepared)
        self.metrics.record_generation(completion.input_tokens, completion.output_tokens, completion.cached_tokens,
                                       completion.timings.ttft_s, completion.decode_tokens_per_s)
        if not self.prepared.forwarded:  # a forwarded answer is logged with the usage its server reported
            self.record.completed(completion)
        return completion


def _forwarded(events: Iterator[Item], record: RequestLog) -> Iterator[Item]:
    """Another server's events, passed on unchanged; its final usage and stop reason go to the log."""
    usage: dict[str, Any] = {}
    stop_reason = None
    for item in events:
        kind, data = item if item is not None else ("ping", {})
        if kind == "message_start":
            usage.update((data.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            stop_reason = (data.get("delta") or {}).get("stop_reason")
        elif kind == "message_stop":
            record.forwarded(usage, stop_reason)
        yield item


def _context_limited(completion: Completion, prepared: Prepared) -> Completion:
    """Say ``model_context_window_exceeded``, as Anthropic does, when the context window (not the
    client's max_tokens) cut the answer short: "max_tokens" would blame the client's limit."""
    if completion.stop_reason == "max_tokens" and prepared.max_tokens < prepared.requested_max_tokens:
        return replace(completion, stop_reason="model_context_window_exceeded")
    return completion


def _without_server_tools(request: MessagesRequest) -> MessagesRequest:
    """Anthropic-hosted tools (web search, code execution) cannot run locally: the model never sees them."""
    if not any(is_server_tool(tool) for tool in request.tools):
        return request
    return request.replace(tools=[tool for tool in request.tools if not is_server_tool(tool)])


__all__ = ["ApiError", "MessagesService", "Prepared"]
