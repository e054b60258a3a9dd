"""Grammar-constrained sampling for every engine, with llguidance.

Why llguidance: one Rust library computes the allowed-token mask for both engines from the
backend's own vocabulary (llama.cpp vocab or Hugging Face tokenizer), compiles JSON schemas itself
(``%json`` inside a Lark grammar, so a tool call's name and arguments are one grammar), reports a
schema it cannot express instead of crashing, and is fast enough per token (tens of µs) that
constrained decoding keeps pace with unconstrained. The engine only masks logits before sampling.

A :class:`Constraint` with a ``trigger`` is lazy: nothing is masked until the model has written the
trigger text (``<tool_call>``), so free text costs nothing; then the grammar takes over from the
bytes after it, and with ``rearm`` lets go again once the call is complete.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from pensieve_server.engine.base import Constraint

log = logging.getLogger(__name__)

GRAMMAR_CACHE_SIZE = 16


class GrammarsUnavailable(Exception):
    """llguidance could not read this model's vocabulary: constrained decoding is off for the model."""


class TokenGrammars:
    """A backend's llguidance tokenizer and its recently compiled grammars.

    The tokenizer reads every token of the vocabulary (0.14 s for SmolLM2 on an H200 host, 0.27 s on
    the 2-core VM): :meth:`build_in_background` starts that at load, so the first request with tools
    does not pay it. A build that fails is not retried: it would cost every request that time again.
    """

    def __init__(self, make_tokenizer: Callable[[], Any], vocab_size: int) -> None:
        self._make_tokenizer = make_tokenizer
        self._tokenizer: Any = None
        self._failure: str | None = None
        self._building = threading.Lock()
        self._builder: threading.Thread | None = None
        self.vocab_size = vocab_size
        self._compiled: OrderedDict[str, Any] = OrderedDict()

    def tokenizer(self) -> Any:
        """The llguidance tokenizer (built now, or waited for); GrammarsUnavailable when it cannot be."""
        if self._tokenizer is None:
            with self._building:
                if self._tokenizer is None and self._failure is None:
                    try:
                        self._tokenizer = self._make_tokenizer()
                    except Exception as exc:  # noqa: BLE001 - any library failure turns constraints off
                        self._failure = f"{type(exc).__name__}: {exc}"
                        log.warning("constrained decoding is off for this model: llguidance could not read its "
                                    "vocabulary (%s); llguidance >= 1.7 is needed", self._failure[:300])
        if self._tokenizer is None:
            raise GrammarsUnavailable(self._failure or "no tokenizer")
        return self._tokenizer

    def build_in_background(self) -> None:
        """Build the tokenizer on a helper thread (a request that needs it meanwhile waits for it)."""
        self._builder = threading.Thread(target=self._build_quietly, name="grammar-tokenizer", daemon=True)
        self._builder.start()

    def wait_for_build(self) -> None:
        """Wait for a build in flight: it reads the model's vocabulary, which must outlive it."""
        if self._builder is not None:
            self._builder.join()

    def _build_quietly(self) -> None:
        with contextlib.suppress(GrammarsUnavailable):
            self.tokenizer()

    def _matcher(self, grammar: str) -> Any | None:
        """A fresh matcher for ``grammar`` (a copy of the cached compiled one); None if it does not compile."""
        template = self._compiled.get(grammar)
        if template is None:
            from llguidance import LLMatcher

            template = LLMatcher(self.tokenizer(), grammar, log_level=0)
            if template.is_error():
                log.warning("constrained decoding off for this request: the grammar does not compile (%s)",
                            template.get_error().splitlines()[0][:300])
                return None
            self._compiled[grammar] = template
            while len(self._compiled) > GRAMMAR_CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar)
        return template.deep_copy()

    def start(self, constraint: Constraint | None) -> ConstrainedRun | None:
        """The per-request state for ``constraint`` (None: sample freely)."""
        if constraint is None:
            return None
        try:
            fresh = self._matcher(constraint.grammar)
        except GrammarsUnavailable:
            return None  # said once, when the tokenizer could not be built
        except Exception as exc:  # noqa: BLE001 - a grammar library failure must never fail the request
            log.warning("constrained decoding off for this request: %s", exc)
            return None
        if fresh is None:
            return None
        return ConstrainedRun(self, constraint, fresh)


class ConstrainedRun:
    """One generation's grammar state: ``allowed()`` before sampling, ``accept()`` after each token."""

    def __init__(self, grammars: TokenGrammars, constraint: Constraint, fresh: Any) -> None:
        self._grammars = grammars
        self._fresh = fresh  # an unused matcher, copied again when a rearmed trigger fires
        self._trigger = constraint.trigger.encode()
        self._rearm = constraint.rearm
        self._tail = b""
        self._matcher: Any = None
        self.failed = False
        # The mask's words, computed in place every constrained step (no per-token allocation).
        self._bits = np.empty((grammars.tokenizer().vocab_size + 31) // 32, dtype=np.int32)
        self._forbidden_bits = np.empty_like(self._bits)
        if not self._trigger:
            self._matcher = fresh.deep_copy()

    @property
    def active(self) -> bool:
        return self._matcher is not None and not self.failed

    def allowed(self, size: int = 0) -> np.ndarray | None:
        """A boolean mask over ``size`` logits (the vocabulary's size by default); None while the text is free."""
        if not self.active:
            return None
        size = size or self._grammars.vocab_size
        bits = self._computed_bits()
        mask = np.unpackbits(bits.view(np.uint8), count=min(size, bits.size * 32), bitorder="little").view(bool)
        if mask.size >= size:
            return mask
        return np.concatenate([mask, np.zeros(size - mask.size, dtype=bool)])

    def mask_logits(self, logits: np.ndarray) -> None:
        """Set every token the grammar forbids to -inf in ``logits`` (a writable float array, in place).

        The bitmask is computed into a reused buffer and inverted in place; the logits are touched
        only where a token is forbidden, and not at all when the grammar allows every token.
        """
        if not self.active:
            return
        forbidden_bits = np.invert(self._computed_bits(), out=self._forbidden_bits)
        size = logits.shape[-1]
        covered = min(size, forbidden_bits.size * 32)
        forbidden = np.unpackbits(forbidden_bits.view(np.uint8), count=covered, bitorder="little").view(bool)
        if forbidden.any():
            logits[:covered][forbidden] = -np.inf
        if size > covered:
            logits[covered:] = -np.inf  # tokens the grammar library does not know are never allowed

    def _computed_bits(self) -> np.ndarray:
        """The matcher's allowed-token bitmask for the next token, written into this run's buffer."""
        bits = self._bits
        self._matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        return bits

    def accept(self, token: int, piece: bytes) -> None:
        """Record the sampled ``token`` (its text bytes ``piece``)."""
        if self.failed:
            return
        if self._matcher is not None:
            if not self._matcher.consume_token(token):
                self._give_up(self._matcher.get_error())
            elif self._rearm and self._matcher.is_accepting():
                self._matcher, self._tail = None, b""  # the call is complete: free text again
            return
        self._tail += piece
        found = self._tail.find(self._trigger)
        if found < 0:
            self._tail = self._tail[-(len(self._trigger) - 1):] if len(self._trigger) > 1 else b""
            return
        rest, self._tail = self._tail[found + len(self._trigger):], b""
        self._matcher = self._fresh.deep_copy()
        if rest and not self._matcher.consume_tokens(self._grammars.tokenizer().tokenize_bytes(rest)):
            self._give_up(f"the text right after the trigger does not fit the grammar: {rest[:40]!r}")

    def _give_up(self, why: str) -> None:
        self.failed = True
        log.info("constrained decoding stopped for this request (validated after generation instead): %s",
                 why.splitlines()[0][:300] if why else "matcher error")
