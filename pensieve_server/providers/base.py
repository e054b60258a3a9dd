"""The contract between the Messages pipeline and whatever answers: a local engine or an upstream server.

:class:`~pensieve_server.service.MessagesService` holds exactly one :class:`Provider`, chosen once
at start (:func:`pensieve_server.providers.make_provider`), and never asks which kind it has. What
every answer shares (the ``max_tokens`` check, the context-window stop reason, metrics, the request
log) is written once, in the service; a provider only resolves names, prepares, submits, streams
and counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pensieve_server.anthropic.stream import StreamEvent
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.engine.base import Completion, PrefixMatch


@dataclass(frozen=True)
class ModelStatus:
    """A served model as /health, /metrics and the start-up line see it, whoever serves it."""

    name: str
    engine: str
    device: str
    context_length: int  # 0: unknown (an upstream without a configured context length)
    queue_depth: int = 0
    gpu_layers: dict[str, Any] | None = None  # llama.cpp only: asked for and offloaded
    cache_bytes: int = 0
    disk: Any = None  # the model's on-disk prefix states (engine.disk_states.DiskStates), if any


class Target(Protocol):
    """The model a request goes to, as the shared checks need it."""

    @property
    def name(self) -> str: ...

    @property
    def engine(self) -> str: ...

    @property
    def context_length(self) -> int: ...


@dataclass
class Prepared:
    """A request ready to submit: fitted, and turned into what the provider sends (``work``)."""

    request: MessagesRequest  # fitted
    target: Any  # the provider's Target
    work: Any  # the provider's own: a local prompt and sampling params, or an upstream body
    prompt_tokens: int | None  # None when only the answerer knows (an upstream)
    max_tokens: int  # what the answer may use, after the context capped it
    requested_max_tokens: int  # the client's max_tokens
    fit_actions: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # what the client should know (x-pensieve-notice)
    forwarded: bool = False  # the answer's events and usage come from another server, as it reported them
    prepare_s: float = 0.0  # loading (a first request), parsing, fitting, rendering, tokenizing: logged

    @property
    def model_name(self) -> str:
        return self.target.name


class Outcome(Protocol):
    """What the service does with each answer's milestones; providers call it, never reimplement it."""

    def matched(self, match: PrefixMatch) -> None:
        """The engine said how much of the prompt it reuses (before prefill)."""

    def completed(self, completion: Completion) -> Completion:
        """The answer ended: returns the completion to report (its stop reason may change)."""
        ...


Item = StreamEvent | None  # None: a keepalive ping is due


class Provider(Protocol):
    """Resolve a name, prepare, submit, stream, count, report, close."""

    def names(self) -> list[str]:
        """The model names /v1/models lists."""
        ...

    def resolve(self, requested: str) -> str:
        """The served name for what a client asked for (claude-* names through the tiers); NotFound."""
        ...

    def load(self, requested: str) -> Target:
        """The model ``requested`` names (resolved as above), loaded when it needs loading; ApiError
        (NotFound …) when it cannot be."""
        ...

    def preload(self, name: str) -> ModelStatus:
        """Load ``name`` at start, before the first request (``pensieve serve``); EngineError when it cannot be."""
        ...

    def status(self) -> list[ModelStatus]:
        """The models in memory (or in use), least recently used first."""
        ...

    def prepare(self, request: MessagesRequest, body: dict[str, Any], target: Target) -> Prepared: ...

    def count_tokens(self, request: MessagesRequest, body: dict[str, Any], target: Target) -> int: ...

    def submit(self, prepared: Prepared) -> Any:
        """Queue or send it (ServerOverloaded when full); returns the provider's job."""
        ...

    def events(self, prepared: Prepared, job: Any, ping_interval: float | None, outcome: Outcome
               ) -> Iterator[Item]:
        """Anthropic events for ``job``; closing the iterator cancels it. Raises ApiError on failure."""
        ...

    def close(self) -> None: ...
