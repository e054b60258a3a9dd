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
    SamplingParams,
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


def generate(
    backend: Backend,
    prompt: Sequence[int],
    params: SamplingParams,
    cancel: threading.Event | None = None,
    queued_s: float = 0.0,
) -> Iterator[Event]:
    """Run ``backend`` on ``prompt`` and yield TextDelta events, then exactly one Completion.

    Raises :class:`Cancelled` when ``cancel`` is set (checked after every token).
    """
    cancel = cancel or threading.Event()
    timings = Timings(queued_s=queued_s)
    stop_filter = StopSequenceFilter(params.stop_sequences)
    output_tokens = 0
    cached_tokens = 0
    stop_reason, stop_sequence = "end_turn", None
    started = time.perf_counter()
    first_token_at: float | None = None
    if params.max_tokens <= 0:
        yield Completion("max_tokens", None, len(prompt), 0, 0, timings)
        return
    steps = backend.stream(prompt, params, cancel)
    try:
        for step in steps:
            if first_token_at is None:
                first_token_at = time.perf_counter()
                timings.prefill_s = first_token_at - started
                cached_tokens = step.cached_tokens
            if cancel.is_set():
                raise Cancelled("client disconnected")
            if backend.is_stop_token(step.token):
                stop_reason = "end_turn"
                break
            output_tokens += 1
            text = stop_filter.feed(step.text)
            if text:
                yield TextDelta(text)
            if stop_filter.matched is not None:
                stop_reason, stop_sequence = "stop_sequence", stop_filter.matched
                break
            if output_tokens >= params.max_tokens:
                stop_reason = "max_tokens"
                break
        else:
            if cancel.is_set():
                raise Cancelled("client disconnected")
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()
    if stop_sequence is None:
        tail = stop_filter.flush()
        if tail:
            yield TextDelta(tail)
    if first_token_at is not None:
        timings.decode_s = time.perf_counter() - first_token_at
    else:
        timings.prefill_s = time.perf_counter() - started
    yield Completion(stop_reason, stop_sequence, len(prompt), output_tokens, cached_tokens, timings)
