"""Answers from another server (``engine = "upstream"``): OpenAI Chat Completions or Anthropic Messages.

There is no local render or tokenize: the request is fitted (only when ``upstream_context_length``
is set, with the estimate of :mod:`pensieve_server.upstream.tokens`), translated or forwarded, and
the upstream's answer comes back as the same Anthropic events through the same SSE and folding
code, so streaming and non-streaming clients both work. One client (one connection pool) serves
every model of the upstream for the provider's life.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pensieve_server.anthropic.errors import ApiError, NotFound
from pensieve_server.anthropic.fitting import fit_request
from pensieve_server.anthropic.model_names import resolve_model_name
from pensieve_server.anthropic.stream import MessageAssembler
from pensieve_server.anthropic.thinking import thinking_requested
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.engine.base import Completion, Timings
from pensieve_server.providers.base import Item, ModelStatus, Outcome, Prepared
from pensieve_server.settings import Settings
from pensieve_server.upstream import DISCOVER, ENGINE, passthrough
from pensieve_server.upstream.client import Exchange, UpstreamClient, anthropic_events, openai_chunks
from pensieve_server.upstream.tokens import TokenCounter, estimate_tokens
from pensieve_server.upstream.translate import ChunkTranslator, to_openai_request

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"


@dataclass
class UpstreamModel:
    """A model name on the upstream, with its token counter and how many requests it has in flight."""

    name: str
    client: UpstreamClient
    context_length: int  # 0: not configured, so nothing is fitted
    tokens: TokenCounter
    engine: str = ENGINE
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model_id(self) -> str:
        """The id sent upstream: the configured one, or what the upstream lists first."""
        return self.client.first_model() if self.name == DISCOVER else self.name

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)


@dataclass
class UpstreamJob:
    """One request in flight upstream."""

    exchange: Exchange
    model_id: str


class UpstreamProvider:
    def __init__(self, settings: Settings, max_listed: int = 2) -> None:
        self.settings = settings
        self.client = UpstreamClient(settings.upstream_url, settings.upstream_api_key, settings.upstream_api,
                                     settings.upstream_timeout)
        self.max_listed = max_listed  # /health lists the most recently used, as many as a local pool keeps
        self._models: OrderedDict[str, UpstreamModel] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def openai(self) -> bool:
        return self.settings.upstream_api != "anthropic"

    # -- models -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The default and any tier targets: not every name a client sent upstream."""
        names: list[str] = []
        for name in (self.settings.default_model, *self.settings.tiers.values()):
            if name and name not in names:
                names.append(name)
        return names

    def resolve(self, requested: str) -> str:
        """Claude names go through the tier map as for local models; any other name goes upstream as is."""
        try:
            return resolve_model_name(requested, self.names(), self.settings.tiers, self.settings.default_model)
        except NotFound:
            return requested.strip()

    def load(self, requested: str) -> UpstreamModel:
        """The model ``requested`` names on the upstream; no network (the upstream may be down now)."""
        name = self.resolve(requested)
        with self._lock:
            model = self._models.get(name)
            if model is None:
                context = self.settings.upstream_context_length
                model = self._models[name] = UpstreamModel(name, self.client, context, TokenCounter(self.client, name))
            self._models.move_to_end(name)
            while len(self._models) > self.max_listed:
                self._models.popitem(last=False)
            return model

    def preload(self, name: str) -> ModelStatus:
        return self._status(self.load(name))

    def status(self) -> list[ModelStatus]:
        with self._lock:
            models = list(self._models.values())
        return [self._status(model) for model in models]

    def _status(self, model: UpstreamModel) -> ModelStatus:
        return ModelStatus(model.name, ENGINE, f"{self.client.api} API at {self.client.display}",
                           model.context_length, model.in_flight)

    # -- preparing --------------------------------------------------------------------------------
    def prepare(self, request: MessagesRequest, body: dict[str, Any], target: UpstreamModel) -> Prepared:
        context = target.context_length
        fitted, actions = request, []
        if context > 0:
            fit = fit_request(request, count_tokens=estimate_tokens, context_length=context,
                              policy=self.settings.context_policy)
            fitted, actions = fit.request, fit.actions
            if actions:
                log.info("context fitting for upstream %s: %s", target.name, "; ".join(actions))
        if self.openai:
            sent = to_openai_request(fitted, target.name)
        else:
            sent = passthrough.forward_body(body, fitted if context > 0 else None, actions)
        if request.temperature is None and self.settings.sources.get("temperature", "default") != "default":
            sent["temperature"] = self.settings.temperature  # set on purpose; else the upstream's default stands
        return Prepared(fitted, target, sent, None, fitted.max_tokens, request.max_tokens, actions,
                        forwarded=True)

    def count_tokens(self, request: MessagesRequest, body: dict[str, Any], target: UpstreamModel) -> int:
        """The upstream's own count where it can give one (see :mod:`.tokens`), else the estimate."""
        if self.openai:
            return target.tokens.count(request)
        try:
            data = self.client.request_json("POST", passthrough.COUNT_PATH,
                                            {**passthrough.count_body(body), "model": target.model_id},
                                            timeout=30.0)
        except ApiError as exc:
            log.info("upstream count_tokens failed, estimating instead: %s", exc.message)
            return estimate_tokens(request)
        count = data.get("input_tokens") if isinstance(data, dict) else None
        return count if isinstance(count, int) else estimate_tokens(request)

    def submit(self, prepared: Prepared) -> UpstreamJob:
        """Send the request; the upstream's refusal within ``ping_interval`` raises here (a real HTTP status)."""
        model: UpstreamModel = prepared.target
        model_id = model.model_id
        body = {**prepared.work, "model": model_id}
        path = CHAT_PATH if self.openai else passthrough.MESSAGES_PATH
        decode = openai_chunks(self.client.display) if self.openai else anthropic_events(self.client.display)
        model.enter()
        log.info("upstream %s %s model=%s", self.client.display, path, model_id)
        exchange = self.client.stream(path, body, decode, on_done=model.leave)
        exchange.wait_started(max(0.1, min(self.settings.ping_interval, 30.0)))
        return UpstreamJob(exchange, model_id)

    # -- running ----------------------------------------------------------------------------------
    def events(self, prepared: Prepared, job: UpstreamJob, ping_interval: float | None, outcome: Outcome
               ) -> Iterator[Item]:
        """Anthropic events for the upstream's answer; None where a ping is due. Closing stops the upstream."""
        try:
            if self.openai:
                yield from self._translated(prepared, job, ping_interval, outcome)
            else:
                yield from self._relayed(prepared, job, ping_interval, outcome)
        finally:
            job.exchange.close()

    def _translated(self, prepared: Prepared, job: UpstreamJob, ping_interval: float | None, outcome: Outcome
                    ) -> Iterator[Item]:
        request = prepared.request
        input_estimate = estimate_tokens(request)
        assembler = MessageAssembler(model=request.model, input_tokens=input_estimate)
        translator = ChunkTranslator(tuple(request.stop_sequences), show_thinking=thinking_requested(request.thinking))
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
        completion = outcome.completed(_timed(translator.completion(input_estimate), job.exchange))
        yield from assembler.finish(completion)

    def _relayed(self, prepared: Prepared, job: UpstreamJob, ping_interval: float | None, outcome: Outcome
                 ) -> Iterator[Item]:
        relay = passthrough.Relay(prepared.request.model)
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
        outcome.completed(_timed(completion, job.exchange))  # the events went out as the upstream sent them

    def close(self) -> None:
        self.client.close()


def _timed(completion: Completion, exchange: Exchange) -> Completion:
    now = time.perf_counter()
    first = exchange.first_item_at or now
    completion.timings = Timings(prefill_s=first - exchange.started_at, decode_s=now - first)
    return completion
