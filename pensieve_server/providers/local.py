"""Answers from a model on this machine: the pool's engines, through render → tokenize → schedule."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pensieve_server.anthropic.constraints import request_constraint
from pensieve_server.anthropic.errors import InternalError, NotFound, PromptTooLong, ServerOverloaded
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
from pensieve_server.providers.base import Item, ModelStatus, Outcome, Prepared
from pensieve_server.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalWork:
    """What the scheduler runs: the prompt's tokens and how to sample."""

    prompt: list[int]
    params: SamplingParams
    opens_thinking: bool  # the rendered prompt ends inside <think>: the answer starts with reasoning


class LocalProvider:
    def __init__(self, settings: Settings, pool: ModelPool) -> None:
        self.settings = settings
        self.pool = pool

    # -- models -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return self.pool.names()

    def resolve(self, requested: str) -> str:
        return resolve_model_name(requested, self.pool.names(), self.settings.tiers, self.settings.default_model)

    def load(self, requested: str) -> LoadedModel:
        names = self.pool.names()
        name = resolve_model_name(requested, names, self.settings.tiers, self.settings.default_model)
        try:
            return self.pool.get(name)
        except ModelLoadError as exc:
            if name not in names:
                raise NotFound(f"model: {requested} (available: {', '.join(names) or 'none'})") from None
            raise InternalError(f"could not load model {name!r}: {exc}") from None

    def preload(self, name: str) -> ModelStatus:
        return _status(self.pool.get(name))

    def status(self) -> list[ModelStatus]:
        return [_status(model) for model in self.pool.loaded()]

    # -- preparing --------------------------------------------------------------------------------
    def prepare(self, request: MessagesRequest, body: dict[str, Any], target: LoadedModel) -> Prepared:
        # The engine's worker knows a request is on its way (a side request then waits for its turn).
        with target.scheduler.preparing():
            return self._prepare(request, target)

    def _prepare(self, request: MessagesRequest, target: LoadedModel) -> Prepared:
        model = target
        notices = _media_notices(request, model)
        fit = fit_request(request, count_tokens=_counter(model), context_length=model.context_length,
                          policy=self.settings.context_policy)
        if fit.actions:
            log.info("context fitting for %s: %s", model.name, "; ".join(fit.actions))
        prompt_text = render_prompt(fit.request, model.info)
        prompt = model.tokenizer.tokenize(prompt_text)
        reasoning = is_reasoning_template(model.info.chat_template)
        params = SamplingParams(
            max_tokens=fit.max_tokens,  # the one cap: fitting leaves the context's room after this prompt
            temperature=self.settings.temperature if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=0 if request.top_k is None else request.top_k,
            stop_sequences=tuple(request.stop_sequences),
            repeat_penalty=self.settings.repeat_penalty,
            constraint=request_constraint(fit.request, after_thinking=reasoning and thinking_requested(request.thinking)),
        )
        work = LocalWork(prompt, params, reasoning and opens_inside_thinking(prompt_text))
        return Prepared(fit.request, model, work, len(prompt), params.max_tokens, request.max_tokens,
                        fit.actions, notices)

    def count_tokens(self, request: MessagesRequest, body: dict[str, Any], target: LoadedModel) -> int:
        """The ``usage.input_tokens`` that /v1/messages would report for this body: the prompt after
        context fitting (what the model reads). Without ``max_tokens`` the room kept for the answer
        is the one a long answer gets, as in Claude Code's own requests. A prompt that cannot fit at
        all is counted whole (the 400 comes from /v1/messages, not from counting)."""
        context = target.context_length
        if body.get("max_tokens") is None:
            request = request.replace(max_tokens=context)
        count = _counter(target)
        try:
            return fit_request(request, count_tokens=count, context_length=context,
                               policy=self.settings.context_policy).prompt_tokens
        except PromptTooLong:
            return count(request)

    def submit(self, prepared: Prepared) -> Job:
        work: LocalWork = prepared.work
        try:
            return prepared.target.scheduler.submit(work.prompt, work.params)
        except Overloaded as exc:
            raise ServerOverloaded(str(exc)) from None

    # -- running ----------------------------------------------------------------------------------
    def events(self, prepared: Prepared, job: Job, ping_interval: float | None, outcome: Outcome
               ) -> Iterator[Item]:
        request, work, model = prepared.request, prepared.work, prepared.target
        tools = request.tools if (request.tool_choice or {}).get("type") != "none" else []
        assembler: MessageAssembler | None = None
        parser = OutputReader(tools, split=is_reasoning_template(model.info.chat_template),
                              show=thinking_requested(request.thinking), inside=work.opens_thinking)

        def started(cached: int) -> MessageAssembler:
            return MessageAssembler(model=request.model, input_tokens=len(work.prompt),
                                    cache_read_input_tokens=cached, tools=tools)

        try:
            for event in job.iter_events(timeout=ping_interval, merge_text=True):
                if event is None:
                    yield None
                elif isinstance(event, PrefixMatch):
                    outcome.matched(event)
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
                    yield from assembler.finish(outcome.completed(event))
        except Cancelled:
            raise
        except EngineError as exc:
            raise InternalError(str(exc)) from None
        finally:
            job.cancel.set()

    def close(self) -> None:
        self.pool.close()


def _status(m: LoadedModel) -> ModelStatus:
    return ModelStatus(m.name, m.engine, m.backend.device, m.context_length, m.scheduler.depth,
                       getattr(m.backend, "gpu_layers", None), m.backend.cache_bytes(), getattr(m.backend, "disk", None))


def _counter(model: LoadedModel):
    return lambda request: model.tokenizer.count(render_prompt(request, model.info))


def _media_notices(request: MessagesRequest, model: LoadedModel) -> list[str]:
    """Images become text notes for a local model (never a 400 that ends the session): say so."""
    notice = images_notice(count_images(request.messages), model.name)
    if notice:
        log.info("%s", notice)
    return [notice] if notice else []
