"""Saved KV states of whole sequences, shared by the single-sequence backends (llama.cpp, MLX).

When a prompt would throw away much of the live sequence (another conversation), the backend saves
a copy here first; a later prompt that shares more with a saved state than with the live one gets
it back, so alternating conversations (Claude Code's main loop and its side tasks) are not prefilled
again. The store is bounded in bytes. Every state holds its whole sequence, so a prefix shared by
several conversations (Claude Code's system prompt and tools) stays available as long as any one of
them is kept; and eviction takes states that were never reused first (one-off side tasks), least
recently used first, before any state that a later prompt has already continued (the main
conversation, whose prefix every turn shares).

The policy both backends follow lives here too: :func:`worth_saving` (when a prompt starts another
conversation), :meth:`SavedStates.better_than` (when a saved state beats the live one) and
:func:`prompt_keep` (how many cached tokens a prompt keeps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

Payload = TypeVar("Payload")

DEFAULT_CACHE_BYTES = 1024**3  # the bound on saved states unless prefix_cache_bytes says otherwise
# Save the live sequence before a prompt discards at least this many of its tokens, or half of it:
# small discards are the normal re-rendering of the last turn, not another conversation.
SAVE_MIN_DISCARD = 256
# Restore a saved state only when it beats the live sequence by this many tokens.
RESTORE_MIN_GAIN = 16


def worth_saving(live: int, shared: int) -> bool:
    """Whether a prompt sharing ``shared`` of the ``live`` sequence's tokens starts another conversation,
    so the live sequence should be saved before it is cut back."""
    discard = live - shared
    return discard >= SAVE_MIN_DISCARD or (discard > 0 and 2 * discard >= live)


def prompt_keep(shared: int, prompt_len: int) -> int:
    """How many cached tokens a prompt keeps: at least one is evaluated, since sampling needs fresh logits."""
    return min(shared, prompt_len - 1)


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """Length of the longest common prefix of two token sequences."""
    a, b = np.asarray(a), np.asarray(b)
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


@dataclass(eq=False)  # compared by identity: tokens are arrays
class SavedState(Generic[Payload]):
    tokens: np.ndarray
    payload: Payload  # the backend's copy of the KV state: bytes for llama.cpp, cache layers for MLX
    size: int
    reused: int = 0  # how often a prompt started from it (or from a state it superseded)


class SavedStates(Generic[Payload]):
    """Never more than ``limit_bytes`` in all; never-reused states are evicted before reused ones, each
    group least recently used first."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.items: list[SavedState[Payload]] = []  # oldest first
        self.bytes = 0

    def best(self, prompt: Sequence[int] | np.ndarray) -> tuple[int, int]:
        """``(index, shared)``: the saved state sharing the longest prefix with ``prompt``; (-1, 0) if none."""
        found, shared = -1, 0
        for index, item in enumerate(self.items):
            n = common_prefix(item.tokens, prompt)
            if n > shared:
                found, shared = index, n
        return found, shared

    def better_than(self, prompt: Sequence[int] | np.ndarray, shared: int) -> tuple[SavedState[Payload], int] | None:
        """The saved state (taken: see :meth:`take`) and how much of ``prompt`` it holds, when that beats
        the ``shared`` tokens the live sequence holds by :data:`RESTORE_MIN_GAIN`; None otherwise."""
        index, saved_shared = self.best(prompt)
        if index < 0 or saved_shared < shared + RESTORE_MIN_GAIN:
            return None
        return self.take(index), saved_shared

    def take(self, index: int) -> SavedState[Payload]:
        """The state at ``index``, marked most recently used. It stays saved: copy what you change."""
        item = self.items.pop(index)
        item.reused += 1
        self.items.append(item)
        return item

    def covers(self, tokens: Sequence[int] | np.ndarray) -> bool:
        """Whether a saved state already holds all of ``tokens`` (saving them again would add nothing)."""
        return any(len(item.tokens) >= len(tokens) and common_prefix(item.tokens, tokens) == len(tokens)
                   for item in self.items)

    def add(self, tokens: Sequence[int] | np.ndarray, payload: Payload, size: int) -> None:
        if size > self.limit_bytes:
            return
        tokens = np.array(tokens)
        # A state whose tokens are a prefix of the new one is superseded by it (and passes on its reuse).
        superseded = [item for item in self.items
                      if len(item.tokens) <= len(tokens) and common_prefix(item.tokens, tokens) == len(item.tokens)]
        self.items = [item for item in self.items if item not in superseded]
        new = SavedState(tokens, payload, size, max((item.reused for item in superseded), default=0))
        self.items.append(new)
        while sum(item.size for item in self.items) > self.limit_bytes:
            self.items.remove(self._victim(new))
        self.bytes = sum(item.size for item in self.items)

    def _victim(self, new: SavedState[Payload]) -> SavedState[Payload]:
        """The oldest never-reused state, else the oldest; the state being added goes last of all."""
        older = [item for item in self.items if item is not new] or [new]
        return next((item for item in older if item.reused == 0), older[0])

    def clear(self) -> None:
        self.items, self.bytes = [], 0
