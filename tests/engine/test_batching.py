"""Continuous batching on llama.cpp and on MLX (mlx-lm's BatchGenerator), on the real embedded model:
parallel requests finish correctly, cancelled ones free their slot, a full queue is overloaded."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pensieve_server.engine.base import Completion, Overloaded, SamplingParams, TextDelta
from pensieve_server.engine.batching import BatchingBackend
from pensieve_server.engine.pool import ModelPool
from pensieve_server.engine.scheduler import BatchScheduler, Job, make_scheduler
from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.models.store import ModelStore
from pensieve_server.settings import load_settings
from tests.engine.test_llamacpp_backend import chat
from tests.serverutil import running_server

QUESTIONS = {  # ones the 135M model answers right when asked alone
    "What is the capital of France?": "Paris",
    "What is the capital of England?": "London",
    "What is the opposite of hot?": "cold",
    "How many legs does a dog have?": "four",
}


ENGINES = ["llamacpp", "mlx"]


def load_batched(engine: str, store: ModelStore, parallel: int) -> BatchingBackend:
    entry = store.embedded()
    if engine == "mlx":
        pytest.importorskip("mlx_lm")
        from pensieve_server.engine.mlx_batch import MlxBatchBackend

        return MlxBatchBackend.load_batched(entry, store, parallel, context_length=2048, cache_bytes_limit=1 << 28)
    pytest.importorskip("llama_cpp")
    from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend

    return LlamaCppBatchBackend.load_batched(entry, parallel=parallel, context_length=2048)


@pytest.fixture(scope="module", params=ENGINES)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    loaded = load_batched(request.param, ModelStore(tmp_path_factory.mktemp("models")), parallel=2)
    yield loaded
    loaded.close()


def collect(job: Job) -> tuple[str, Completion]:
    text, done = "", None
    for event in job.iter_events():
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Completion):
            done = event
    assert done is not None
    return text, done


def test_more_requests_than_slots_all_finish_correctly(backend):
    scheduler = make_scheduler(backend, queue_size=8)
    assert isinstance(scheduler, BatchScheduler)
    try:
        jobs = {q: scheduler.submit(backend.tokenize(chat(q)), SamplingParams(max_tokens=24, temperature=0.0))
                for q in QUESTIONS}
        for question, job in jobs.items():
            text, done = collect(job)
            assert QUESTIONS[question] in text, (question, text)
            assert done.input_tokens == len(job.prompt) and done.output_tokens <= 24
        assert backend.active() == 0
    finally:
        scheduler.close()


def test_cancelled_stream_frees_its_slot_for_the_next_request(backend):
    scheduler = make_scheduler(backend, queue_size=8)
    try:
        long = SamplingParams(max_tokens=400, temperature=0.8, seed=1)
        story = backend.tokenize(chat("Write a very long story about a dragon."))
        first, second = scheduler.submit(story, long), scheduler.submit(story, long)
        waiting = scheduler.submit(backend.tokenize(chat("What is the capital of France?")),
                                   SamplingParams(max_tokens=24, temperature=0.0))
        for _ in range(3):  # both slots are busy generating
            first.next_event(timeout=30)
        assert backend.active() == 2 and not waiting.events.qsize()
        first.cancel.set()
        second.cancel.set()
        text, done = collect(waiting)
        assert "Paris" in text and done.stop_reason == "end_turn"
    finally:
        scheduler.close()


def test_full_queue_is_overloaded(backend):
    scheduler = make_scheduler(backend, queue_size=1)
    try:
        prompt = backend.tokenize(chat("Write a very long story."))
        params = SamplingParams(max_tokens=200, temperature=0.8)
        jobs = []
        for _ in range(2):  # both run: a job waits in the queue only until a slot takes it
            jobs.append(scheduler.submit(prompt, params))
            jobs[-1].next_event(timeout=30)
        jobs.append(scheduler.submit(prompt, params))  # waits for a slot
        with pytest.raises(Overloaded):
            scheduler.submit(prompt, params)
        for job in jobs:
            job.cancel.set()
    finally:
        scheduler.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_parallel_http_streams_through_the_real_server(engine, tmp_path, monkeypatch):
    pytest.importorskip("mlx_lm" if engine == "mlx" else "llama_cpp")
    monkeypatch.setenv("PENSIEVE_HOME", str(tmp_path))
    settings = load_settings({"engine": engine, "parallel": 4, "context_length": 2048})
    pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
    with running_server(pool=pool, engine=engine, parallel=4, context_length=2048,
                        default_model=EMBEDDED_NAME, temperature=0.0, repeat_penalty=1.0) as server:
        assert isinstance(pool.get(EMBEDDED_NAME).scheduler, BatchScheduler)
        started = threading.Barrier(len(QUESTIONS))

        def ask(question: str) -> str:
            body = {"model": "claude-haiku-4-5", "max_tokens": 24, "stream": True,
                    "system": "You are a helpful assistant.", "messages": [{"role": "user", "content": question}]}
            started.wait()
            text = ""
            with server.client() as client, client.stream("POST", "/v1/messages", json=body) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: ") and '"text_delta"' in line:
                        text += httpx.Response(200, content=line[6:]).json()["delta"]["text"]
            return text

        with ThreadPoolExecutor(len(QUESTIONS)) as executor:
            answers = dict(zip(QUESTIONS, executor.map(ask, QUESTIONS), strict=True))
    pool.close()
    for question, answer in answers.items():
        assert QUESTIONS[question] in answer, (question, answer)
