"""The one generation loop shared by every backend: stop sequences, max_tokens, EOS, cancel, timings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from pensieve_server.engine.base import (
    Backend,
    Cancelled,
    Completion,
    Event,
    PrefixMatch,
    SamplingParams,
    Step,
    TextDelta,
    Timings,
)


class StopSequenceFilter:
    """Holds back text that could be the start of a stop sequence, and cuts at a full match."""

    def __init__(self, stop_sequences: Sequence[str]) -> None:
        self.stops = [s for s in stop_sequences if s]
        self.pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Add ``text``; return what is safe to emit now. After a match, ``matched`` is set."""
        if not self.stops:
            return text
        self.pending += text
        first: tuple[int, str] | None = None
        for stop in self.stops:
            index = self.pending.find(stop)
            if index != -1 and (first is None or index < first[0]):
                first = (index, stop)
        if first is not None:
            self.matched = first[1]
            out, self.pending = self.pending[: first[0]], ""
            return out
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Generation:
    """One request's generation state, fed one sampled token at a time.

    The sequential loop (:func:`generate`) and the batching scheduler both drive it, so stop
    sequences, max_tokens, EOS, usage and timings behave the same whichever way tokens arrive.
    """

    def __init__(self, backend: Backend, prompt_tokens: int, params: SamplingParams, queued_s: float = 0.0) -> None:
        self.backend = backend
        self.params = params
        self.prompt_tokens = prompt_tokens
        self.timings = Timings(queued_s=queued_s)
        self.stop_filter = StopSequenceFilter(params.stop_sequences)
        self.output_tokens = 0
        self.cached_tokens = 0
        self.cached_from_disk = 0
        self.matched = False  # a PrefixMatch has been sent
        self.stop_reason, self.stop_sequence = "end_turn", None
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.done = params.max_tokens <= 0
        if self.done:
            self.stop_reason = "max_tokens"

    def on_match(self, match: PrefixMatch) -> list[Event]:
        """The backend's prefix reuse, known before prefill: passed on once, ahead of any text."""
        if self.matched:
            return []
        self.matched = True
        self.cached_tokens, self.cached_from_disk = match.cached_tokens, match.cached_from_disk
        return [match]

    def on_step(self, step: Step) -> list[Event]:
        """Events for one sampled token; the last list ends with the Completion (``done`` is then set)."""
        events: list[Event] = []
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.timings.prefill_s = self.first_token_at - self.started
            if not self.matched:  # a backend that reports its reuse only with the first token
                events += self.on_match(PrefixMatch(step.cached_tokens, step.cached_from_disk))
        if self.backend.is_stop_token(step.token):
            self.stop_reason = "end_turn"
            return events + self.finish()
        self.output_tokens += 1
        text = self.stop_filter.feed(step.text)
        if text:
            events.append(TextDelta(text))
        if self.stop_filter.matched is not None:
            self.stop_reason, self.stop_sequence = "stop_sequence", self.stop_filter.matched
            return events + self.finish()
        if self.output_tokens >= self.params.max_tokens:
            self.stop_reason = "max_tokens"
            return events + self.finish()
        return events

    def finish(self) -> list[Event]:
        """The held-back text and the Completion: called at a stop, or when the backend ran out."""
        self.done = True
        events: list[Event] = []
        if self.stop_sequence is None:
            tail = self.stop_filter.flush()
            if tail:
                events.append(TextDelta(tail))
        if self.first_token_at is not None:
            self.timings.decode_s = time.perf_counter() - self.first_token_at
        else:
            self.timings.prefill_s = time.perf_counter() - self.started
        events.append(Completion(self.stop_reason, self.stop_sequence, self.prompt_tokens, self.output_tokens,
                                 self.cached_tokens, self.timings, self.cached_from_disk))
        return events


def generate(
    backend: Backend,
    prompt: Sequence[int],
    params: SamplingParams,
    cancel: threading.Event | None = None,
    queued_s: float = 0.0,
) -> Iterator[Event]:
    """Run ``backend`` on ``prompt`` and yield one PrefixMatch (before prefill where the backend says so
    early), TextDelta events, then exactly one Completion.

    Raises :class:`Cancelled` when ``cancel`` is set (checked after every token).
    """
    cancel = cancel or threading.Event()
    state = Generation(backend, len(prompt), params, queued_s)
    if state.done:
        yield from state.finish()
        return
    steps = backend.stream(prompt, params, cancel)
    try:
        for step in steps:
            if cancel.is_set():
                raise Cancelled("client disconnected")
            if isinstance(step, PrefixMatch):
                yield from state.on_match(step)
                continue
            events = state.on_step(step)
            if state.done:
                break
            yield from events
        else:
            if cancel.is_set():
                raise Cancelled("client disconnected")
            events = state.finish()
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()
    yield from events
