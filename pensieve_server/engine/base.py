"""The engine contract every backend (MLX, llama.cpp, scripted) implements, and the types that cross it.

A backend only turns prompt tokens into a stream of sampled tokens. Everything shared — stop
sequences, max_tokens, EOS, cancellation, timings, usage — lives once in
:mod:`pensieve_server.engine.generation`, so both backends behave identically.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from pensieve_server.engine.disk_states import DiskEntry, DiskStates


class EngineError(RuntimeError):
    """The engine failed while loading or generating; the server maps it to a 500 api_error."""


class ModelLoadError(EngineError):
    """A model could not be loaded (missing file, unsupported architecture, wrong engine)."""


class Overloaded(EngineError):
    """The request queue is full; the server answers 529 overloaded_error."""


class Cancelled(EngineError):
    """The client went away; generation stopped early."""


@dataclass(frozen=True)
class Constraint:
    """Grammar-constrained decoding for one request (an llguidance Lark grammar; ``%json`` rules inside).

    ``trigger`` "": the grammar holds from the first token. Otherwise the text is free until the
    model writes ``trigger``; the grammar then constrains what follows it (lazy, as llama.cpp's own
    server does for tool calls), and with ``rearm`` the text is free again once the grammar completes.
    """

    grammar: str
    trigger: str = ""
    rearm: bool = False


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion. ``top_k == 0``, ``top_p == 1.0`` and ``repeat_penalty == 1.0`` mean "off".

    ``repeat_penalty`` divides the logits of tokens among the last ``repeat_last_n`` generated ones:
    small models otherwise fall into loops that run until the context is full.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    constraint: Constraint | None = None  # grammar-constrained decoding (tool calls, JSON output)


@dataclass(frozen=True)
class ModelInfo:
    """What the protocol layer needs to know about the loaded model to render and count prompts."""

    name: str
    context_length: int
    chat_template: str
    bos_token: str = ""
    eos_token: str = ""
    supports_vision: bool = False


@dataclass(frozen=True)
class Step:
    """One sampled token and the text it completes (may be "" while a UTF-8 sequence is partial).

    ``cached_tokens`` is set on the first step only: how many prompt tokens were reused from the
    backend's prefix cache instead of being prefilled (``cached_from_disk`` of them restored from disk).
    """

    token: int
    text: str
    cached_tokens: int = 0
    cached_from_disk: int = 0


@dataclass(frozen=True)
class PrefixMatch:
    """How much of the prompt a backend reuses, known before prefill starts.

    A backend's ``stream()`` yields it once before its first Step, and a batching backend returns it
    from ``admit()``, so ``message_start`` can carry the real input/cache split before the prompt is
    processed. ``cached_tokens`` counts every reused token; ``cached_from_disk`` the part of them a
    saved state on disk supplied.
    """

    cached_tokens: int
    cached_from_disk: int = 0


@dataclass
class Timings:
    queued_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def ttft_s(self) -> float:
        return self.queued_s + self.prefill_s


@dataclass
class Completion:
    """The end of a generation: why it stopped and what it cost."""

    stop_reason: str  # "end_turn" | "max_tokens" | "stop_sequence"
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    timings: Timings = field(default_factory=Timings)
    cached_from_disk: int = 0  # the part of cached_tokens restored from disk

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.output_tokens - 1) / self.timings.decode_s if self.timings.decode_s > 0 and self.output_tokens > 1 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        fresh = self.input_tokens - self.cached_tokens
        return fresh / self.timings.prefill_s if self.timings.prefill_s > 0 else 0.0


@dataclass(frozen=True)
class TextDelta:
    """Text produced by the model, already cut at stop sequences."""

    text: str


Event = PrefixMatch | TextDelta | Completion


class Backend(ABC):
    """One loaded model in one inference library. Not thread-safe: one worker thread calls it."""

    name: str = "backend"
    device: str = "cpu"
    info: ModelInfo
    disk: DiskStates | None = None
    restored_from_disk: int = 0  # prompt tokens the last prompt started got from the disk store

    def check_prompt(self, prompt: Sequence[int]) -> None:
        """The errors every backend gives for a prompt it cannot start: empty, or as long as the context."""
        if len(prompt) == 0:
            raise EngineError("empty prompt")
        if len(prompt) >= self.info.context_length:
            raise EngineError(f"the prompt has {len(prompt)} tokens; the context holds {self.info.context_length}")

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` as the model sees it; special tokens in the text are parsed, no BOS is added."""

    @abstractmethod
    def detokenize(self, tokens: Sequence[int]) -> str: ...

    @abstractmethod
    def is_stop_token(self, token: int) -> bool:
        """True for end-of-sequence / end-of-turn tokens."""

    @abstractmethod
    def stream(self, prompt: Sequence[int], params: SamplingParams, cancel: threading.Event
               ) -> Iterator[Step | PrefixMatch]:
        """Sample tokens after ``prompt`` until the caller stops iterating or ``cancel`` is set.

        Implementations reuse their KV cache for the longest common prefix with earlier prompts, and
        say how much with a :class:`PrefixMatch` before prefilling the rest (optional: without it the
        first Step's ``cached_tokens`` is reported when the first token arrives).
        The caller closes the iterator to stop early; backends must leave their cache consistent.
        """

    def cache_bytes(self) -> int:
        """Bytes held by the prefix/KV cache (for status and metrics)."""
        return 0

    def disk_identity(self, weights: Path) -> dict[str, Any] | None:
        """What a saved KV state depends on (model file, engine version, context, KV layout); None: no disk states."""
        return None

    def disk_candidate(self, prompt: Sequence[int] | np.ndarray, have: int) -> tuple[DiskEntry, int, bytes] | None:
        """The disk state worth restoring for ``prompt`` when ``have`` of its tokens are cached already:
        ``(entry, prompt tokens it holds, its payload)``; None when there is none or it cannot be read.

        Resets :attr:`restored_from_disk`; the backend sets it once the state is in.
        """
        self.restored_from_disk = 0
        disk = self.disk
        if disk is None:
            return None
        entry, shared = disk.restorable(prompt, have)
        payload = disk.read(entry) if entry is not None else None
        return (entry, shared, payload) if entry is not None and payload is not None else None

    def idle_work_pending(self) -> bool:
        """Whether work waits for a moment without requests (copying a prefix state out for the disk)."""
        return False

    def idle_work(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Do that work: the worker calls it once no request has come for a moment (scheduler.IDLE_WORK_AFTER_S)."""

    def prepare_constraints(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Start building what constrained decoding needs (llguidance's view of the vocabulary), so the
        first request with tools does not wait for it; called once the model is loaded."""

    def attach_disk(self, disk: DiskStates) -> None:
        """Save long prefixes' states to ``disk`` and restore them from it (see engine/disk_states.py)."""
        self.disk = disk

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Free the model."""
