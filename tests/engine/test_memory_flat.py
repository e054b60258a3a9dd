"""RSS stays flat over a long session on the real embedded model: saved prefix states are bounded in
bytes and the batched context is allocated once, so many different conversations do not grow memory.

The first rounds fill the saved-state store up to its budget (and warm up allocators); after that,
every further conversation evicts an older state, and resident memory must stay where it was.
"""

from __future__ import annotations

import pytest

from pensieve_server import memory
from pensieve_server.engine.base import Completion, SamplingParams
from pensieve_server.engine.llamacpp_backend import LlamaCppBackend
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.engine.scheduler import make_scheduler
from pensieve_server.models.store import ModelStore

pytestmark = pytest.mark.slow
STATE_BUDGET = 16 * 1024**2  # a few conversations' worth of saved states
WARM, MEASURED = 8, 16  # conversations
GROWTH_LIMIT = 24 * 1024**2


def conversation(index: int) -> str:
    """A distinct ~200-token conversation: each one is saved when the next replaces it."""
    notes = " ".join(f"Fact {index}.{n}: item {index * 31 + n} weighs {n * 7 % 13} kilograms." for n in range(12))
    return (f"<|im_start|>system\nYou are assistant number {index}.<|im_end|>\n<|im_start|>user\n{notes}\n"
            "Which item is heaviest?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("kind", ["single", "batched"])
def test_resident_memory_is_flat_across_many_conversations(kind: str, tmp_path_factory: pytest.TempPathFactory):
    entry = ModelStore(tmp_path_factory.mktemp("models")).embedded()
    if kind == "single":
        backend = LlamaCppBackend.load(entry, context_length=2048, cache_bytes_limit=STATE_BUDGET)
    else:
        backend = LlamaCppBatchBackend.load_batched(entry, parallel=2, context_length=2048)
    scheduler = make_scheduler(backend, queue_size=4)
    params = SamplingParams(max_tokens=4, temperature=0.0)

    together = 1 if kind == "single" else 2

    def one(index: int) -> None:
        jobs = [scheduler.submit(backend.tokenize(conversation(index * together + k)), params) for k in range(together)]
        for job in jobs:
            assert isinstance(list(job.iter_events())[-1], Completion)

    try:
        for index in range(WARM // together):
            one(index)
        before = memory.resident_bytes()
        for index in range(WARM // together, (WARM + MEASURED) // together):
            one(index)
        growth = memory.resident_bytes() - before
        print(f"{kind}: RSS {before / 2**20:.0f} MiB, +{growth / 2**20:.1f} MiB over {MEASURED} conversations, "
              f"cache {backend.cache_bytes() / 2**20:.1f} MiB")
        assert growth < GROWTH_LIMIT
        if kind == "single":
            assert 0 < backend.cache_bytes() <= STATE_BUDGET + 2048 * 30 * 2 * 3 * 64 * 2  # saved + the live sequence
    finally:
        scheduler.close()
        backend.close()
