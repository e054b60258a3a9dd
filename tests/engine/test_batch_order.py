"""Batched llama.cpp computes a step of several streams in one pass, whatever order they were admitted in.

Each slot is a KV stream of its own, and llama.cpp splits a batch into one compute pass per run of
consecutive sequence ids (``llama_batch_allocr::split_equal``). Streams admitted in another order
than their slots' (a conversation returning to its cached slot) used to cost a pass each. Real
llama-cpp-python and the embedded model; llama.cpp's own counter of reused compute graphs tells the
passes apart: in a steady decode, one pass per step reuses one graph per step.
"""

from __future__ import annotations

from pensieve_server.engine.base import SamplingParams
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.models.store import ModelStore
from tests.engine.test_llamacpp_backend import chat


def test_streams_admitted_out_of_slot_order_decode_in_one_pass(model_store: ModelStore) -> None:
    backend = LlamaCppBatchBackend.load_batched(model_store.embedded(), parallel=4, context_length=512)
    lib, params = backend._lib, SamplingParams(max_tokens=200, temperature=0.0)
    try:
        for key in "abcd":  # slots 0-3 in turn (the least recently used)
            backend.admit(key, backend.tokenize(chat(f"Session {key}: count to a hundred.")), params)
        backend.release("a")
        backend.release("c")
        backend.admit("e", backend.tokenize(chat("Session e: list fifty animals.")), params)
        backend.admit("f", backend.tokenize(chat("Session f: name forty cities.")), params)
        slots = [backend._running[key].slot.seq_id for key in backend._running]
        assert slots != sorted(slots), slots  # admitted out of slot order: what the test is about
        for _ in range(3):  # prefills, then the decode graph is built once
            backend.step()
        before = lib.llama_perf_context(backend._ctx).n_reused
        steps = 8
        for _ in range(steps):
            out = backend.step()
            assert len(out) == 4 and all(step is not None for step in out.values())
        reused = lib.llama_perf_context(backend._ctx).n_reused - before
        assert reused == steps, f"{reused} graphs reused in {steps} steps of 4 streams (slots {slots})"
    finally:
        backend.close()
