"""The contract of a backend that decodes several requests together (continuous batching).

:class:`~pensieve_server.engine.scheduler.BatchScheduler` admits up to ``parallel`` requests, calls
:meth:`step` in a loop and releases each request when it is done or cancelled. The single-request
:meth:`Backend.stream` runs on the same machinery, so both paths share one implementation.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Hashable, Iterator, Sequence

from pensieve_server.engine.base import Backend, PrefixMatch, SamplingParams, Step


class BatchingBackend(Backend):
    """A backend with ``parallel`` slots; requests are keyed by any hashable the scheduler picks."""

    parallel: int = 1
    # Prompt tokens per second, measured on the backend's own prefill steps (None: not yet, or not
    # measured by this backend). The scheduler skips its gather window when a prefill is that quick.
    prefill_tokens_per_s: float | None = None

    @abstractmethod
    def admit(self, key: Hashable, prompt: Sequence[int], params: SamplingParams) -> PrefixMatch | None:
        """Start ``prompt`` (prefilled by later steps); raises EngineError when it cannot start.

        Returns how much of the prompt is reused, known now, before any prefill (None: reported with
        the first Step instead)."""

    @abstractmethod
    def step(self) -> dict[Hashable, Step | None]:
        """One batched decode step: a Step for each request that sampled a token.

        A request whose context is full maps to None: the scheduler finishes it.
        """

    @abstractmethod
    def release(self, key: Hashable) -> None:
        """End a request, however it ended; its cache stays for later prompts that share it."""

    @abstractmethod
    def active(self) -> int:
        """Requests admitted and not yet released."""

    def stream(self, prompt: Sequence[int], params: SamplingParams, cancel: threading.Event
               ) -> Iterator[Step | PrefixMatch]:
        key = object()
        match = self.admit(key, prompt, params)
        try:
            if match is not None:
                yield match
            while not cancel.is_set():
                step = self.step().get(key, False)
                if step is None:
                    return
                if step is not False:
                    yield step
        finally:
            self.release(key)
