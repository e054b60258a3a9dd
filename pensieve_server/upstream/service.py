"""The upstream half of the Messages pipeline: prepare → submit → events, like a local model's.

:class:`~pensieve_server.service.MessagesService` calls this when the resolved model is an upstream
one. There is no local render or tokenize: the request is fitted (only when
``upstream_context_length`` is set, with the estimate of :mod:`.tokens`), translated or forwarded,
and the upstream's answer comes back as the same Anthropic events through the same SSE and
folding code, so streaming and non-streaming clients both work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

from pensieve_server.anthropic.errors import ApiError, InvalidRequest, NotFound
from pensieve_server.anthropic.fitting import fit_request
from pensieve_server.anthropic.model_names import resolve_model_name
from pensieve_server.anthropic.stream import MessageAssembler, StreamEvent
from pensieve_server.anthropic.thinking import thinking_requested
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.engine.base import Completion, Timings
from pensieve_server.engine.pool import LoadedModel
from pensieve_server.metrics import Metrics
from pensieve_server.settings import Settings
from pensieve_server.upstream import passthrough
from pensieve_server.upstream.client import Exchange, anthropic_events, openai_chunks
from pensieve_server.upstream.model import InFlight, UpstreamBackend
from pensieve_server.upstream.tokens import estimate_tokens
from pensieve_server.upstream.translate import ChunkTranslator, to_openai_request

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"


@dataclass
class UpstreamPlan:
    """What :meth:`UpstreamService.submit` sends: the fitted request and the upstream's body."""

    request: MessagesRequest  # fitted; ``model`` is the client's name, echoed back in message_start
    body: dict[str, Any]
    input_estimate: int
    requested_max_tokens: int
    actions: list[str] = field(default_factory=list)


@dataclass
class UpstreamJob:
    """One request in flight upstream (stands where a scheduler Job would)."""

    exchange: Exchange
    model_id: str


def _backend(model: LoadedModel) -> UpstreamBackend:
    return cast(UpstreamBackend, model.backend)


class UpstreamService:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics

    @property
    def openai(self) -> bool:
        return self.settings.upstream_api != "anthropic"

    def resolve(self, requested: str, names: list[str]) -> str:
        """Claude names go through the tier map as for local models; any other name goes upstream as is."""
        try:
            return resolve_model_name(requested, names, self.settings.tiers, self.settings.default_model)
        except NotFound:
            return requested.strip()

    # -- preparing --------------------------------------------------------------------------------
    def prepare(self, request: MessagesRequest, raw: dict[str, Any], model: LoadedModel) -> UpstreamPlan:
        context = model.info.context_length
        fitted, actions = request, []
        if context > 0:
            if self.settings.context_policy == "strict" and request.max_tokens > context:
                raise InvalidRequest(f"max_tokens: {request.max_tokens} > {context}, which is the maximum allowed "
                                     f"for model {model.entry.name}")
            fit = fit_request(request, count_tokens=estimate_tokens, context_length=context,
                              policy=self.settings.context_policy)
            fitted, actions = fit.request, fit.actions
            if actions:
                log.info("context fitting for upstream %s: %s", model.entry.name, "; ".join(actions))
        if self.openai:
            body = to_openai_request(fitted, model.entry.name)
        else:
            body = passthrough.forward_body(raw, fitted if context > 0 else None, actions)
        if request.temperature is None and self.settings.sources.get("temperature", "default") != "default":
            body["temperature"] = self.settings.temperature  # set on purpose; else the upstream's default stands
        return UpstreamPlan(fitted, body, estimate_tokens(fitted), request.max_tokens, actions)

    def submit(self, model: LoadedModel, plan: UpstreamPlan) -> UpstreamJob:
        """Send the request; the upstream's refusal within ``ping_interval`` raises here (a real HTTP status)."""
        backend = _backend(model)
        model_id = backend.model_id
        body = {**plan.body, "model": model_id}
        path = CHAT_PATH if self.openai else passthrough.MESSAGES_PATH
        decode = openai_chunks(backend.client.display) if self.openai else anthropic_events(backend.client.display)
        gate = cast(InFlight, model.scheduler)
        gate.enter()
        log.info("upstream %s %s model=%s", backend.client.display, path, model_id)
        exchange = backend.client.stream(path, body, decode, on_done=gate.leave)
        exchange.wait_started(max(0.1, min(self.settings.ping_interval, 30.0)))
        return UpstreamJob(exchange, model_id)

    # -- running ----------------------------------------------------------------------------------
    def events(self, plan: UpstreamPlan, job: UpstreamJob, ping_interval: float | None = None
               ) -> Iterator[StreamEvent | None]:
        """Anthropic events for the upstream's answer; None where a ping is due. Closing stops the upstream."""
        try:
            if self.openai:
                yield from self._translated(plan, job, ping_interval)
            else:
                yield from self._relayed(plan, job, ping_interval)
        finally:
            job.exchange.close()

    def _translated(self, plan: UpstreamPlan, job: UpstreamJob, ping_interval: float | None
                    ) -> Iterator[StreamEvent | None]:
        assembler = MessageAssembler(model=plan.request.model, input_tokens=plan.input_estimate)
        translator = ChunkTranslator(tuple(plan.request.stop_sequences),
                                     show_thinking=thinking_requested(plan.request.thinking))
        yield from assembler.start()
        quiet_since = time.perf_counter()
        for chunk in job.exchange.items(ping_interval):
            if chunk is None:
                yield None
                continue
            sent = False
            for piece in translator.feed(chunk):
                for event in assembler.on_piece(piece):
                    sent = True
                    yield event
            if sent:
                quiet_since = time.perf_counter()
            elif ping_interval and time.perf_counter() - quiet_since >= ping_interval:
                quiet_since = time.perf_counter()
                yield None  # chunks that show nothing (reasoning, role-only) still keep the client's line alive
        for piece in translator.finish():
            yield from assembler.on_piece(piece)
        completion = self._timed(translator.completion(plan.input_estimate), job.exchange)
        if completion.stop_reason == "max_tokens" and plan.request.max_tokens < plan.requested_max_tokens:
            completion = replace(completion, stop_reason="model_context_window_exceeded")
        self._record(completion)
        yield from assembler.finish(completion)

    def _relayed(self, plan: UpstreamPlan, job: UpstreamJob, ping_interval: float | None
                 ) -> Iterator[StreamEvent | None]:
        relay = passthrough.Relay(plan.request.model)
        for item in job.exchange.items(ping_interval):
            if item is None or item[0] == "ping":
                yield None  # the upstream's pings become ours
                continue
            yield from relay.on_event(*item)
        usage = relay.usage
        cached = int(usage.get("cache_read_input_tokens") or 0)
        completion = Completion(str(usage.get("stop_reason") or "end_turn"), None,
                                int(usage.get("input_tokens") or 0) + cached, int(usage.get("output_tokens") or 0),
                                cached)
        self._record(self._timed(completion, job.exchange))

    @staticmethod
    def _timed(completion: Completion, exchange: Exchange) -> Completion:
        now = time.perf_counter()
        first = exchange.first_item_at or now
        completion.timings = Timings(prefill_s=first - exchange.started_at, decode_s=now - first)
        return completion

    def _record(self, completion: Completion) -> None:
        self.metrics.record_generation(completion.input_tokens, completion.output_tokens, completion.cached_tokens,
                                       completion.timings.ttft_s, completion.decode_tokens_per_s)

    # -- counting ---------------------------------------------------------------------------------
    def count_tokens(self, request: MessagesRequest, raw: dict[str, Any], model: LoadedModel) -> int:
        """The upstream's own count where it can give one (see :mod:`.tokens`), else the estimate."""
        backend = _backend(model)
        if self.openai:
            return backend.tokens.count(request)
        try:
            data = backend.client.request_json("POST", passthrough.COUNT_PATH,
                                               {**passthrough.count_body(raw), "model": backend.model_id},
                                               timeout=30.0)
        except ApiError as exc:
            log.info("upstream count_tokens failed, estimating instead: %s", exc.message)
            return estimate_tokens(request)
        count = data.get("input_tokens") if isinstance(data, dict) else None
        return count if isinstance(count, int) else estimate_tokens(request)
