"""From a decoded request body to engine work and back: the Messages pipeline without Flask.

parse → map the model name → load → fit the context → render → tokenize → queue → stream events.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pensieve_server.anthropic.constraints import request_constraint
from pensieve_server.anthropic.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    NotFound,
    PromptTooLong,
    ServerOverloaded,
)
from pensieve_server.anthropic.fitting import fit_request
from pensieve_server.anthropic.media import count_images, images_notice
from pensieve_server.anthropic.model_names import resolve_model_name
from pensieve_server.anthropic.render import render_prompt
from pensieve_server.anthropic.stream import MessageAssembler
from pensieve_server.anthropic.thinking import (
    OutputReader,
    is_reasoning_template,
    opens_inside_thinking,
    thinking_requested,
)
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.anthropic.validate import (
    is_server_tool,
    parse_count_tokens_request,
    parse_messages_request,
)
from pensieve_server.engine.base import (
    Cancelled,
    Completion,
    EngineError,
    ModelLoadError,
    Overloaded,
    PrefixMatch,
    SamplingParams,
    TextDelta,
)
from pensieve_server.engine.pool import LoadedModel, ModelPool
from pensieve_server.engine.scheduler import Job
from pensieve_server.metrics import Metrics
from pensieve_server.request_log import RequestLog
from pensieve_server.settings import Settings
from pensieve_server.upstream import ENGINE as UPSTREAM
from pensieve_server.upstream import is_upstream
from pensieve_server.upstream.service import UpstreamJob, UpstreamPlan, UpstreamService

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A request ready for the engine: fitted, rendered and tokenized."""

    request: MessagesRequest
    model: LoadedModel
    prompt: list[int]
    params: SamplingParams
    fit_actions: list[str] = field(default_factory=list)
    requested_max_tokens: int = 0  # the client's max_tokens, before the context capped it
    upstream: UpstreamPlan | None = None  # set when an upstream server answers instead of a local model
    notices: list[str] = field(default_factory=list)  # what the client should know (x-pensieve-notice)
    opens_thinking: bool = False  # the rendered prompt ends inside <think>: the answer starts with reasoning


class MessagesService:
    def __init__(self, settings: Settings, pool: ModelPool, metrics: Metrics) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.upstream = UpstreamService(settings, metrics) if is_upstream(settings) else None

    # -- preparing --------------------------------------------------------------------------------
    def load_model(self, requested: str) -> LoadedModel:
        names = self.pool.names()
        if self.upstream is not None:
            local = self.upstream.resolve(requested, names)
        else:
            local = resolve_model_name(requested, names, self.settings.tiers, self.settings.default_model)
        try:
            return self.pool.get(local)
        except ModelLoadError as exc:
            if local not in names:
                raise NotFound(f"model: {requested} (available: {', '.join(names) or 'none'})") from None
            raise InternalError(f"could not load model {local!r}: {exc}") from None

    def _media_notices(self, request: MessagesRequest, model: LoadedModel) -> list[str]:
        """Images become text notes for a local model (never a 400 that ends the session): say so."""
        notice = images_notice(count_images(request.messages), model.entry.name)
        if notice:
            log.info("%s", notice)
        return [notice] if notice else []

    def _count(self, model: LoadedModel):
        return lambda request: model.count_tokens(render_prompt(request, model.info))

    def prepare(self, body: Any) -> Prepared:
        request = _without_server_tools(parse_messages_request(
            body, max_messages=self.settings.max_messages, max_tools=self.settings.max_tools
        ))
        model = self.load_model(request.model)
        if self.upstream is not None and model.engine == UPSTREAM:
            plan = self.upstream.prepare(request, body, model)
            params = SamplingParams(max_tokens=plan.request.max_tokens)
            return Prepared(plan.request, model, [], params, plan.actions, request.max_tokens, upstream=plan)
        notices = self._media_notices(request, model)
        context = model.info.context_length
        if self.settings.context_policy == "strict" and request.max_tokens > context:
            raise InvalidRequest(
                f"max_tokens: {request.max_tokens} > {context}, which is the maximum allowed for "
                f"model {model.entry.name}"
            )
        fit = fit_request(
            request,
            count_tokens=self._count(model),
            context_length=context,
            policy=self.settings.context_policy,
        )
        if fit.actions:
            log.info("context fitting for %s: %s", model.entry.name, "; ".join(fit.actions))
        prompt_text = render_prompt(fit.request, model.info)
        prompt = model.backend.tokenize(prompt_text)
        reasoning = is_reasoning_template(model.info.chat_template)
        params = SamplingParams(
            max_tokens=max(1, min(fit.max_tokens, context - len(prompt))),
            temperature=self.settings.temperature if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=0 if request.top_k is None else request.top_k,
            stop_sequences=tuple(request.stop_sequences),
            repeat_penalty=self.settings.repeat_penalty,
            constraint=request_constraint(fit.request, after_thinking=reasoning and thinking_requested(request.thinking)),
        )
        return Prepared(fit.request, model, prompt, params, fit.actions, request.max_tokens, notices=notices,
                        opens_thinking=reasoning and opens_inside_thinking(prompt_text))

    def count_tokens(self, body: Any) -> int:
        request = _without_server_tools(parse_count_tokens_request(
            body, max_messages=self.settings.max_messages, max_tools=self.settings.max_tools
        ))
        model = self.load_model(request.model)
        if self.upstream is not None and model.engine == UPSTREAM:
            return self.upstream.count_tokens(request, body, model)
        return self._fitted_count(request, model, max_tokens_given=body.get("max_tokens") is not None)

    def _fitted_count(self, request: MessagesRequest, model: LoadedModel, *, max_tokens_given: bool) -> int:
        """The ``usage.input_tokens`` that /v1/messages would report for this body: the prompt after
        context fitting (what the model reads). Without ``max_tokens`` the room kept for the answer
        is the one a long answer gets, as in Claude Code's own requests. A prompt that cannot fit at
        all is counted whole (the 400 comes from /v1/messages, not from counting)."""
        context = model.info.context_length
        if not max_tokens_given:
            request = request.replace(max_tokens=context)
        count = self._count(model)
        try:
            return fit_request(request, count_tokens=count, context_length=context,
                               policy=self.settings.context_policy).prompt_tokens
        except PromptTooLong:
            return count(request)

    def submit(self, prepared: Prepared) -> Job | UpstreamJob:
        if self.upstream is not None and prepared.upstream is not None:
            return self.upstream.submit(prepared.model, prepared.upstream)
        try:
            return prepared.model.scheduler.submit(prepared.prompt, prepared.params)
        except Overloaded as exc:
            raise ServerOverloaded(str(exc)) from None

    # -- running ----------------------------------------------------------------------------------
    def events(self, prepared: Prepared, job: Job | UpstreamJob, ping_interval: float | None = None,
               request_id: str = "") -> Iterator[tuple[str, dict] | None]:
        """Anthropic stream events for ``job``; None where a keepalive ping is due.

        ``message_start`` goes out as soon as the engine knows how much of the prompt it reuses
        (before prefill), so its usage carries the real input/cache split; pings may precede it
        while the request waits for the model. Raises ApiError for engine failures. Closing the
        iterator (client gone) cancels the job. Every request leaves one line in the request log.
        """
        record = RequestLog(request_id, prepared.request.model, prepared.model.entry.name, prepared.model.engine,
                            len(prepared.prompt) if prepared.upstream is None else None, prepared.fit_actions)
        try:
            if isinstance(job, UpstreamJob):
                assert self.upstream is not None and prepared.upstream is not None
                yield from _forwarded(self.upstream.events(prepared.upstream, job, ping_interval), record)
            else:
                yield from self._local_events(prepared, job, ping_interval, record)
        except ApiError as exc:
            record.ended_early("failed", f"{exc.error_type}: {exc.message}")
            raise
        finally:
            record.ended_early("cancelled", "the client went away")  # a no-op once the line is written

    def _local_events(self, prepared: Prepared, job: Job, ping_interval: float | None, record: RequestLog
                      ) -> Iterator[tuple[str, dict] | None]:
        request = prepared.request
        tools = request.tools if (request.tool_choice or {}).get("type") != "none" else []
        assembler: MessageAssembler | None = None
        parser = OutputReader(tools, split=is_reasoning_template(prepared.model.info.chat_template),
                              show=thinking_requested(request.thinking), inside=prepared.opens_thinking)

        def started(cached: int) -> MessageAssembler:
            return MessageAssembler(model=request.model, input_tokens=len(prepared.prompt),
                                    cache_read_input_tokens=cached, tools=tools)

        try:
            for event in job.iter_events(timeout=ping_interval):
                if event is None:
                    yield None
                elif isinstance(event, PrefixMatch):
                    record.matched(event)
                    if assembler is None:
                        assembler = started(event.cached_tokens)
                        yield from assembler.start()
                elif isinstance(event, TextDelta):
                    assembler = assembler or started(0)  # engines send a PrefixMatch first; never relied on
                    for piece in parser.feed(event.text):
                        yield from assembler.on_piece(piece)
                elif isinstance(event, Completion):
                    assembler = assembler or started(event.cached_tokens)
                    for piece in parser.finish():
                        yield from assembler.on_piece(piece)
                    event = _context_limited(event, prepared)
                    self._record(event)
                    record.completed(event)
                    yield from assembler.finish(event)
        except Cancelled as exc:
            record.ended_early("cancelled", str(exc))
            return
        except EngineError as exc:
            raise InternalError(str(exc)) from None
        finally:
            job.cancel.set()

    def _record(self, completion: Completion) -> None:
        self.metrics.record_generation(
            completion.input_tokens,
            completion.output_tokens,
            completion.cached_tokens,
            completion.timings.ttft_s,
            completion.decode_tokens_per_s,
        )


def _forwarded(events: Iterator[tuple[str, dict] | None], record: RequestLog) -> Iterator[tuple[str, dict] | None]:
    """The upstream's events, passed on unchanged; its final usage and stop reason go to the log."""
    usage: dict[str, Any] = {}
    stop_reason = None
    try:
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
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # the upstream request ends with the client's


def _context_limited(completion: Completion, prepared: Prepared) -> Completion:
    """Say ``model_context_window_exceeded``, as Anthropic does, when the context window (not the
    client's max_tokens) cut the answer short: "max_tokens" would blame the client's limit."""
    if completion.stop_reason == "max_tokens" and prepared.params.max_tokens < prepared.requested_max_tokens:
        return replace(completion, stop_reason="model_context_window_exceeded")
    return completion


def _without_server_tools(request: MessagesRequest) -> MessagesRequest:
    """Anthropic-hosted tools (web search, code execution) cannot run locally: the model never sees them."""
    if not any(is_server_tool(tool) for tool in request.tools):
        return request
    return request.replace(tools=[tool for tool in request.tools if not is_server_tool(tool)])


__all__ = ["ApiError", "MessagesService", "Prepared"]
