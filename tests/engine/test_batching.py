"""Continuous batching on llama.cpp and on MLX (mlx-lm's BatchGenerator), on the real embedded model:
parallel requests finish correctly, cancelled ones free their slot, a full queue is overloaded.

"Correctly" means each answer is the raw engine's greedy answer to that request's own prompt (up to
near-ties that batching's other arithmetic layout may flip; tests/raw_reference.py), never words
that one machine's model happens to say, and never a word of another request's answer."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pensieve_server.engine.base import Completion, Overloaded, SamplingParams, TextDelta
from pensieve_server.engine.batching import BatchingBackend
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.engine.mlx_batch import MlxBatchBackend
from pensieve_server.engine.pool import ModelPool
from pensieve_server.engine.scheduler import BatchScheduler, Job, make_scheduler
from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.models.store import ModelStore
from pensieve_server.settings import load_settings
from tests.engine.test_llamacpp_backend import chat
from tests.raw_reference import RawEngine, assert_greedy_path, raw_engine
from tests.serverutil import running_server

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "What is the capital of England?", "What is the opposite of hot?",
             "How many legs does a dog have?"]


ENGINES = ["llamacpp", "mlx"]


def load_batched(engine: str, store: ModelStore, parallel: int) -> BatchingBackend:
    entry = store.embedded()
    if engine == "mlx":
        return MlxBatchBackend.load_batched(entry, store, parallel, context_length=2048, cache_bytes_limit=1 << 28)
    return LlamaCppBatchBackend.load_batched(entry, parallel=parallel, context_length=2048)


@pytest.fixture(scope="module")
def store(model_store: ModelStore) -> ModelStore:
    """The session's store: the GGUF is converted for MLX once."""
    return model_store


@pytest.fixture(scope="module", params=ENGINES)
def backend(request: pytest.FixtureRequest, store: ModelStore):
    loaded = load_batched(request.param, store, parallel=2)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def raw(backend: BatchingBackend, store: ModelStore) -> RawEngine:
    return raw_engine(backend.name, store.derived_dir(store.embedded(), "mlx"))


def collect(job: Job) -> tuple[str, Completion]:
    text, done = "", None
    for event in job.iter_events():
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Completion):
            done = event
    assert done is not None
    return text, done


def test_more_requests_than_slots_all_finish_correctly(backend, raw: RawEngine):
    scheduler = make_scheduler(backend, queue_size=8)
    assert isinstance(scheduler, BatchScheduler)
    try:
        jobs = {q: scheduler.submit(backend.tokenize(chat(q)), SamplingParams(max_tokens=12, temperature=0.0))
                for q in QUESTIONS}
        for job in jobs.values():
            text, done = collect(job)
            assert_greedy_path(raw, job.prompt, text, done.stop_reason)
            assert done.input_tokens == len(job.prompt) and done.output_tokens <= 12
        assert backend.active() == 0
    finally:
        scheduler.close()


def test_cancelled_stream_frees_its_slot_for_the_next_request(backend, raw: RawEngine):
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
        assert_greedy_path(raw, waiting.prompt, text, done.stop_reason)
        assert done.stop_reason in ("end_turn", "max_tokens")
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
def test_parallel_http_streams_through_the_real_server(engine, store: ModelStore, tmp_path, monkeypatch):
    monkeypatch.setenv("PENSIEVE_HOME", str(tmp_path))
    settings = load_settings({"engine": engine, "parallel": 4, "context_length": 2048})
    pool = ModelPool(settings, store)
    with running_server(pool=pool, engine=engine, parallel=4, context_length=2048,
                        default_model=EMBEDDED_NAME, temperature=0.0, repeat_penalty=1.0) as server:
        assert isinstance(pool.get(EMBEDDED_NAME).scheduler, BatchScheduler)
        started = threading.Barrier(len(QUESTIONS))

        def ask(question: str) -> tuple[str, str, int]:
            """The streamed text, stop reason and prompt tokens of one request."""
            body = {"model": "claude-haiku-4-5", "max_tokens": 24, "stream": True,
                    "system": "You are a helpful assistant.", "messages": [{"role": "user", "content": question}]}
            started.wait()
            text, stop_reason, prompt_tokens = "", "", 0
            with server.client() as client, client.stream("POST", "/v1/messages", json=body) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = json.loads(line[6:])
                    if data["type"] == "content_block_delta":
                        text += data["delta"]["text"]
                    elif data["type"] == "message_start":
                        usage = data["message"]["usage"]
                        prompt_tokens = usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)
                    elif data["type"] == "message_delta":
                        stop_reason = data["delta"]["stop_reason"]
            return text, stop_reason, prompt_tokens

        with ThreadPoolExecutor(len(QUESTIONS)) as executor:
            answers = dict(zip(QUESTIONS, executor.map(ask, QUESTIONS), strict=True))
    pool.close()
    raw = raw_engine(engine, store.derived_dir(store.embedded(), "mlx"))
    for question, (text, stop_reason, prompt_tokens) in answers.items():
        prompt = raw.vocab.tokenize(chat(question))
        assert prompt_tokens == len(prompt), question  # the server rendered the prompt the raw engine gets
        assert_greedy_path(raw, prompt, text, stop_reason)
