"""Sequence KV states in and out of llama.cpp without paying for fresh memory on the engine thread.

Copying a state out into newly allocated memory costs far more than the copy: the kernel maps and
zeroes every page first, and Python then copies it once more into ``bytes``. For Claude Code's prompt
on the embedded model (~135 MB) that took about half a second on the engine thread of the 2-core VM,
while the next request waited (a warm turn 0.6 s after a cold one: 1.1 s to its first token instead
of 0.08 s). The copy itself (``llama_state_seq_get_data``) takes a few milliseconds.

So a state bound for the disk goes into one buffer kept between copies and lent to the disk writer
until the file is written; a restore hands llama.cpp a pointer into the payload instead of a copy.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from collections.abc import Callable
from typing import Any

# The kept buffer grows in steps of this size (fewer regrowths as a conversation lengthens) ...
GROW_STEP = 16 * 1024**2
# ... and is kept only up to this size: a larger state (a big model's long context) is copied into
# memory of its own and freed after writing, rather than held for the life of the server.
KEEP_MAX_BYTES = 512 * 1024**2


def state_size(lib: Any, ctx: Any, seq_id: int) -> int:
    return int(lib.llama_state_seq_get_size(ctx, seq_id))


def copy_state(lib: Any, ctx: Any, seq_id: int, limit: int | None = None, size: int | None = None) -> bytes:
    """An owned copy of one sequence's KV state (b"" when empty or larger than ``limit``); ``size``: its
    state_size() when the caller has it already (llama.cpp computes it by a dry run of the copy)."""
    size = state_size(lib, ctx, seq_id) if size is None else size
    if not size or (limit is not None and size > limit):
        return b""
    buf = _unzeroed(size)
    written = lib.llama_state_seq_get_data(ctx, buf, size, seq_id)
    return bytes(memoryview(buf)[:written]) if written else b""


def set_state(lib: Any, ctx: Any, seq_id: int, data: bytes) -> bool:
    """Replace sequence ``seq_id``'s KV cells with ``data`` (read in place, not copied); False when
    llama.cpp refuses it."""
    lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), seq_id, -1, -1)
    pointer = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    return bool(lib.llama_state_seq_set_data(ctx, pointer, len(data), seq_id))


class StateBuffer:
    """One reusable buffer for states on their way to the disk, lent to one write at a time, and grown
    ahead of need (:meth:`reserve`) so that the engine thread only ever copies into it."""

    def __init__(self) -> None:
        self._buffer: ctypes.Array[ctypes.c_uint8] | None = None
        self._spare: ctypes.Array[ctypes.c_uint8] | None = None  # grown while the buffer was lent
        self._growing = 0  # the size a helper thread is preparing
        self._lent = False
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return len(self._buffer) if self._buffer is not None else 0

    def reserve(self, size: int) -> None:
        """Have room for a state of ``size`` bytes, prepared on a helper thread: mapping and first
        touching 135 MB took 0.26 s on the VM, which the engine thread would otherwise pay at the
        copy while the next request waits."""
        size = _rounded(size)
        with self._lock:
            if size > KEEP_MAX_BYTES or size <= max(self.capacity, self._growing):
                return
            self._growing = size
        threading.Thread(target=self._grow, args=(size,), name="state-buffer", daemon=True).start()

    def _grow(self, size: int) -> None:
        buffer = _unzeroed(size)
        ctypes.memset(buffer, 0, size)  # touches every page; ctypes lets go of the GIL meanwhile
        with self._lock:
            if self._lent:
                self._spare = buffer  # swapped in when the buffer comes back
            elif size > self.capacity:
                self._buffer = buffer
            if self._growing == size:
                self._growing = 0

    @property
    def busy(self) -> bool:
        """Lent to a write still in flight."""
        return self._lent

    def lend(self, lib: Any, ctx: Any, seq_id: int) -> tuple[memoryview, Callable[[], None]] | None:
        """Sequence ``seq_id``'s state and the call that gives its memory back (once written); None when
        the sequence is empty or the buffer is :attr:`busy`: the copy waits for the next idle moment, or
        is done without, rather than taking fresh memory on the engine thread (on the H200 host, states
        copied into fresh memory while the writer was busy put 0.36-0.62 s on short requests' first token).
        A state too large to keep a buffer for is copied into memory of its own."""
        size = state_size(lib, ctx, seq_id)
        if not size:
            return None
        if size > KEEP_MAX_BYTES:
            data = copy_state(lib, ctx, seq_id, size=size)
            return (memoryview(data), _nothing) if data else None
        with self._lock:
            if self._lent:
                return None
            self._lent = True
            if self.capacity < size:  # not reserved in time: its pages are touched by the copy
                self._buffer = None  # the old one goes before the new one is allocated
                self._buffer = _unzeroed(_rounded(size))
        assert self._buffer is not None
        written = lib.llama_state_seq_get_data(ctx, self._buffer, size, seq_id)
        if not written:
            self._give_back()
            return None
        return memoryview(self._buffer).cast("B")[:written], self._give_back

    def _give_back(self) -> None:
        with self._lock:
            self._lent = False
            if self._spare is not None and len(self._spare) > self.capacity:
                self._buffer = self._spare
            self._spare = None


def _rounded(size: int) -> int:
    return -(-size // GROW_STEP) * GROW_STEP


def _unzeroed(size: int) -> ctypes.Array[ctypes.c_uint8]:
    """``size`` bytes of anonymous memory, mapped at once and filled in by the first copy. ctypes'
    own arrays are zeroed up front with the GIL held: ~0.3 s for 135 MB on the VM, during which the
    server could not even read the next request."""
    return (ctypes.c_uint8 * size).from_buffer(mmap.mmap(-1, size))


def _nothing() -> None:
    """Giving back memory of its own: nothing to do, it is freed with its last reference."""
