"""Closing a scheduler cancels what runs and waits for the worker, so the backend is never freed under it."""

from __future__ import annotations

import time

import pytest

from pensieve_server.engine.base import Cancelled, SamplingParams
from pensieve_server.engine.pool import LoadedModel
from pensieve_server.engine.scheduler import Scheduler
from pensieve_server.engine.scripted import ScriptedBackend
from pensieve_server.models.store import ModelEntry


def wait_until_running(scheduler: Scheduler, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while scheduler.active is None:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.01)


def test_close_cancels_the_running_and_queued_jobs_and_waits() -> None:
    backend = ScriptedBackend(delay_s=0.05, default_reply="x" * 10_000)  # ~8 minutes if never cancelled
    scheduler = Scheduler(backend).start()
    running = scheduler.submit([1, 2, 3], SamplingParams(max_tokens=10_000))
    queued = scheduler.submit([4, 5, 6], SamplingParams(max_tokens=10_000))
    wait_until_running(scheduler)
    started = time.monotonic()
    assert scheduler.close(timeout=30) is True
    assert time.monotonic() - started < 5  # within a token or two, not the whole answer
    for job in (running, queued):
        with pytest.raises(Cancelled):
            list(job.iter_events())


def test_loaded_model_frees_the_backend_only_after_the_worker_stopped() -> None:
    backend = ScriptedBackend(delay_s=0.05, default_reply="y" * 10_000)
    entry = ModelEntry("scripted", "gguf", "/nonexistent.gguf", "test", 200_000, 0)
    model = LoadedModel(entry, "scripted", backend, Scheduler(backend).start())
    model.scheduler.submit([1], SamplingParams(max_tokens=10_000))
    wait_until_running(model.scheduler)
    model.close()
    assert backend.closed and not model.scheduler._thread.is_alive()


def test_the_worker_runs_nothing_until_started_and_an_unstarted_scheduler_closes() -> None:
    backend = ScriptedBackend(default_reply="ok")
    scheduler = Scheduler(backend)
    job = scheduler.submit([1, 2], SamplingParams(max_tokens=5))
    assert job.next_event(timeout=0.2) is None and backend.prompts == []  # queued, no worker yet
    scheduler.start()
    assert [event for event in job.iter_events() if event is not None]
    assert backend.prompts == ["\x01\x02"] and scheduler.close(timeout=30) is True
    assert Scheduler(ScriptedBackend()).close(timeout=1) is True  # never started: nothing to wait for
