"""States leave llama.cpp through one reserved buffer, and come back in without a copy.

The engine thread copies a finished request's state out for the disk while the next request may be
waiting, so that copy must land in memory prepared beforehand (llamacpp_state.py says what fresh
memory cost). Real batched llama.cpp, embedded model, a real disk store.
"""

from __future__ import annotations

import mmap
import time
from pathlib import Path

import pytest

from pensieve_server.engine import llamacpp_state
from pensieve_server.engine.base import SamplingParams
from pensieve_server.engine.disk_states import DiskStates
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.engine.llamacpp_state import StateBuffer, copy_state, set_state, state_size
from pensieve_server.models.store import ModelStore
from tests.engine.test_llamacpp_backend import chat

RULES = " ".join(f"Rule {i}: a careful assistant checks item {i} twice before it answers." for i in range(30))
PARAMS = SamplingParams(max_tokens=2, temperature=0.0)


@pytest.fixture(scope="module")
def backend(model_store: ModelStore):
    loaded = LlamaCppBatchBackend.load_batched(model_store.embedded(), parallel=2, context_length=2048)
    yield loaded
    loaded.close()


def run(backend: LlamaCppBatchBackend, question: str) -> int:
    """Prefill and answer ``question`` in a slot; its sequence id."""
    backend.admit("probe", backend.tokenize(chat(f"{RULES} {question}")), PARAMS)
    slot = backend._running["probe"].slot
    while "probe" not in {key for key, step in backend.step().items() if step is not None}:
        pass
    backend.release("probe")
    return slot.seq_id


def grown(buffer: StateBuffer, size: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while buffer.capacity < size and time.monotonic() < deadline:
        time.sleep(0.01)
    return buffer.capacity >= size


def test_a_lent_state_is_the_state_and_lands_in_the_reserved_buffer(backend: LlamaCppBatchBackend) -> None:
    seq = run(backend, "Is the sky blue?")
    lib, ctx = backend._lib, backend._ctx
    size, owned = state_size(lib, ctx, seq), copy_state(lib, ctx, seq)
    assert size > 1_000_000 and len(owned) == size
    buffer = StateBuffer()
    buffer.reserve(size)
    assert grown(buffer, size), "the helper thread prepared room for the state"
    reserved = buffer._buffer
    lent = buffer.lend(lib, ctx, seq)
    assert lent is not None
    view, give_back = lent
    assert buffer._buffer is reserved, "copied into the reserved memory, not into fresh memory"
    assert view.obj is reserved and bytes(view) == owned
    give_back()


def test_while_the_buffer_is_lent_no_state_is_copied_into_fresh_memory(backend: LlamaCppBatchBackend) -> None:
    """Fresh memory is what made the copy slow; a copy that finds the buffer lent waits (or is done without)."""
    seq = run(backend, "Name a colour.")
    lib, ctx = backend._lib, backend._ctx
    buffer = StateBuffer()
    first = buffer.lend(lib, ctx, seq)
    assert first is not None and buffer.busy
    assert buffer.lend(lib, ctx, seq) is None, "lent: nothing copied"
    first[1]()
    assert not buffer.busy
    again = buffer.lend(lib, ctx, seq)
    assert again is not None and again[0].obj is buffer._buffer and bytes(again[0]) == bytes(first[0])
    again[1]()


def test_a_state_set_in_place_is_the_state_that_was_copied_out(backend: LlamaCppBatchBackend) -> None:
    seq = run(backend, "What is two plus two?")
    lib, ctx = backend._lib, backend._ctx
    before = copy_state(lib, ctx, seq)
    lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), seq, -1, -1)
    assert state_size(lib, ctx, seq) < len(before)
    assert set_state(lib, ctx, seq, before)
    assert copy_state(lib, ctx, seq) == before
    assert not set_state(lib, ctx, seq, b"not a state" * 100), "llama.cpp refuses garbage"


def test_the_backend_reserves_room_only_when_states_go_to_a_disk(
        backend: LlamaCppBatchBackend, tmp_path: Path) -> None:
    run(backend, "Say yes.")  # the bytes per token are known from here on
    assert backend._state_buffer.capacity == 0, "no disk store: no memory held for states"
    identity = backend.disk_identity(Path(backend._llama.model_path))
    backend.attach_disk(DiskStates(tmp_path / "states", identity, 512 * 1024**2, min_tokens=256, save_step=256))
    try:
        seq = run(backend, "Say no.")
        needed = state_size(backend._lib, backend._ctx, seq)
        assert grown(backend._state_buffer, needed), "admitting a long prompt reserved room for its state"
    finally:
        backend.disk = None


def test_fresh_state_memory_is_mapped_not_zeroed_by_python() -> None:
    """ctypes zeroes its own arrays with the GIL held; the buffer maps memory that the copy fills in."""
    memory = llamacpp_state._unzeroed(llamacpp_state.GROW_STEP)
    assert len(memory) == llamacpp_state.GROW_STEP
    assert any(isinstance(getattr(kept, "obj", None), mmap.mmap) for kept in (memory._objects or {}).values())
