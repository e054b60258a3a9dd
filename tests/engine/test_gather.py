"""Requests that arrive together run together, and the short one's first token comes first.

Claude Code sends its title side request (hundreds of new tokens) 1-5 ms before the turn (a few new
tokens on a warm prefix). An idle batched worker waits ``GATHER_S`` for company before its first
step, and each step prefills the shortest prompts first (llamacpp_batch.prefill_plan). Real
llama.cpp, embedded model; the window is widened here so the test never depends on the machine's
speed.
"""

from __future__ import annotations

import time

import pytest

from pensieve_server.engine import scheduler as scheduler_module
from pensieve_server.engine.base import Completion, SamplingParams, TextDelta
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.engine.scheduler import make_scheduler
from pensieve_server.models.store import ModelStore
from tests.engine.test_llamacpp_backend import chat

RULES = " ".join(f"Rule {i}: answer item {i} with care." for i in range(40))


def test_a_short_request_arriving_just_after_a_long_one_gets_its_first_token_first(
        model_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "GATHER_S", 2.0)
    backend = LlamaCppBatchBackend.load_batched(model_store.embedded(), parallel=2, context_length=2048)
    firsts: dict[int, int] = {}
    admitted_at_first_step: list[int] = []
    step, steps = backend.step, [0]

    def recording_step():
        if not steps[0]:
            admitted_at_first_step.append(backend.active())
        out = step()
        for key, produced in out.items():
            if produced is not None:
                firsts.setdefault(key, steps[0])
        steps[0] += 1
        return out

    monkeypatch.setattr(backend, "step", recording_step)
    scheduler = make_scheduler(backend, queue_size=4)
    try:
        params = SamplingParams(max_tokens=4, temperature=0.0)
        side_prompt = backend.tokenize(chat(f"{RULES} Give this chat a title."))
        turn_prompt = backend.tokenize(chat("Hi"))
        assert len(side_prompt) > 4 * len(turn_prompt)
        side = scheduler.submit(side_prompt, params)
        time.sleep(0.2)  # the side request leads (by 1-5 ms in Claude Code; here well inside the window)
        turn = scheduler.submit(turn_prompt, params)
        for job in (side, turn):
            events = list(job.iter_events(timeout=300))
            assert isinstance(events[-1], Completion) and any(isinstance(e, TextDelta) for e in events)
    finally:
        scheduler.close()
        backend.close()
    assert admitted_at_first_step == [2], "both requests share the first step"
    assert firsts[id(turn)] < firsts[id(side)], "the short prompt's first token comes before the long one's"


def test_a_request_still_being_prepared_is_waited_for(model_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claude Code's turn needs ~150 ms of fitting after its side request is ready: the idle worker
    waits for a request announced by ``preparing()`` (far beyond ``GATHER_S``, kept at its default)."""
    monkeypatch.setattr(scheduler_module, "PREPARING_WAIT_S", 60.0)
    backend = LlamaCppBatchBackend.load_batched(model_store.embedded(), parallel=2, context_length=2048)
    firsts: dict[int, int] = {}
    admitted_at_first_step: list[int] = []
    step, steps = backend.step, [0]

    def recording_step():
        if not steps[0]:
            admitted_at_first_step.append(backend.active())
        out = step()
        for key, produced in out.items():
            if produced is not None:
                firsts.setdefault(key, steps[0])
        steps[0] += 1
        return out

    monkeypatch.setattr(backend, "step", recording_step)
    scheduler = make_scheduler(backend, queue_size=4)
    try:
        params = SamplingParams(max_tokens=4, temperature=0.0)
        side_prompt = backend.tokenize(chat(f"{RULES} Give this chat a title."))
        turn_prompt = backend.tokenize(chat("Hi"))
        with scheduler.preparing():  # the turn arrived and is being fitted
            side = scheduler.submit(side_prompt, params)
            time.sleep(20 * scheduler_module.GATHER_S)
        turn = scheduler.submit(turn_prompt, params)
        for job in (side, turn):
            events = list(job.iter_events(timeout=300))
            assert isinstance(events[-1], Completion) and any(isinstance(e, TextDelta) for e in events)
    finally:
        scheduler.close()
        backend.close()
    assert admitted_at_first_step == [2], "the side request waited for the turn being prepared"
    assert firsts[id(turn)] < firsts[id(side)], "the turn's first token comes first"


def test_a_long_first_request_starts_without_waiting_for_company(model_store: ModelStore,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A turn alone (its prompt longer than GATHER_PROMPT_TOKENS) is not held by the window."""
    monkeypatch.setattr(scheduler_module, "GATHER_S", 60.0)
    backend = LlamaCppBatchBackend.load_batched(model_store.embedded(), parallel=2, context_length=2048)
    scheduler = make_scheduler(backend, queue_size=4)
    try:
        prompt = backend.tokenize(chat("Hi"))
        monkeypatch.setattr(scheduler_module, "GATHER_PROMPT_TOKENS", len(prompt) - 1)
        started = time.monotonic()
        events = list(scheduler.submit(prompt, SamplingParams(max_tokens=4, temperature=0.0)).iter_events(timeout=300))
        took = time.monotonic() - started
    finally:
        scheduler.close()
        backend.close()
    assert isinstance(events[-1], Completion)
    assert took < 30, f"the lone long request waited for company ({took:.1f} s)"


def test_a_lone_short_request_skips_the_window_when_the_backend_prefills_it_sooner(
        model_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU a short prompt's whole prefill beats the window: waiting would only add GATHER_S to its
    first token. The backend measures its own prefill speed; a slow one (a CPU) still waits."""
    monkeypatch.setattr(scheduler_module, "GATHER_S", 1.5)
    backend = LlamaCppBatchBackend.load_batched(model_store.embedded(), parallel=2, context_length=2048)
    scheduler = make_scheduler(backend, queue_size=4)
    params = SamplingParams(max_tokens=2, temperature=0.0)

    def first_token_after(question: str) -> float:
        job = scheduler.submit(backend.tokenize(chat(question)), params)
        started = time.perf_counter()
        for event in job.iter_events(timeout=300):
            if isinstance(event, TextDelta):
                elapsed = time.perf_counter() - started
        return elapsed

    try:
        first_token_after(f"{RULES} Warm up.")  # a prefill of > 64 tokens: the backend measures itself
        assert backend.prefill_tokens_per_s and backend.prefill_tokens_per_s > 0
        backend.prefill_tokens_per_s = 1e9  # as quick as a GPU could be: the window is skipped
        assert first_token_after("Hi") < 1.0
        backend.prefill_tokens_per_s = 1.0  # one token a second: the window stays
        assert first_token_after("Hello") >= 1.5
    finally:
        scheduler.close()
        backend.close()
