"""One worker thread owns a backend (MLX and llama.cpp are not thread-safe); requests queue in front.

Each submitted job gets its own event queue, read by the HTTP thread. A full queue raises
:class:`Overloaded` at once (the server answers 529, which Claude Code retries with backoff).
Setting a job's cancel event stops it within one token, or drops it before it starts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pensieve_server.engine.base import (
    Backend,
    Cancelled,
    EngineError,
    Event,
    Overloaded,
    SamplingParams,
    TextDelta,
)
from pensieve_server.engine.batching import BatchingBackend
from pensieve_server.engine.generation import Generation, generate

log = logging.getLogger(__name__)

_DONE = object()
_NOTHING = object()  # Job._held when no event waits there
# How long an idle batched worker waits for company after a request arrives, before its first step.
# Claude Code sends its title side request 1-5 ms before the turn: admitted together, the turn's few
# new tokens prefill first (llamacpp_batch.prefill_plan) instead of queueing behind the side
# request's whole first chunk (1.4 s of queue seen on a 2-core CPU). With the harness's 5 ms lead the
# turn announces itself (Scheduler.preparing) 7.8-10.9 ms after the side request is submitted, on a
# quiet 2-core CPU (its 90 kB body is still on its way): 10 ms was won by about a millisecond, so a
# busier machine lost it. 30 ms keeps a margin.
GATHER_S = 0.03
# Only a first request of at most this many prompt tokens waits: Claude Code's side requests carry
# about 400, its turns 6k-25k (system prompt and tools). A lone turn then starts at once: on a GPU its
# warm time to first token is a few tens of ms, which the window would have doubled.
GATHER_PROMPT_TOKENS = 2048
# And while a request for this model is still being prepared on an HTTP thread (see
# Scheduler.preparing), it waits up to this long for it: Claude Code's turn is ready ~150 ms after its
# side request (fitting a 21k-token request), and a side request started alone meanwhile takes the CPU
# from that preparation and then holds the turn behind its own engine step.
PREPARING_WAIT_S = 0.5
# Work a backend defers until no request runs (copying a finished request's prefix state out for the
# disk: ~135 MB for Claude Code's prompt on the embedded model, 0.3 s that the next request waited for)
# is done once the queue has stayed empty this long: Claude Code's follow-up after a quick tool, or a
# benchmark's next request, comes sooner and goes first.
IDLE_WORK_AFTER_S = 0.5


@dataclass
class Job:
    prompt: Sequence[int]
    params: SamplingParams
    cancel: threading.Event = field(default_factory=threading.Event)
    events: queue.Queue = field(default_factory=queue.Queue)
    submitted_at: float = field(default_factory=time.perf_counter)
    _held: object = field(default=_NOTHING, repr=False)  # taken from the queue by merging, not yet returned

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when ``timeout`` passes with nothing new (time to send a ping).

        Raises the worker's exception on this thread.
        """
        if self._held is not _NOTHING:
            item, self._held = self._held, _NOTHING
        else:
            try:
                item = self.events.get(timeout=timeout)
            except queue.Empty:
                return None
        if item is _DONE:
            raise _Finished
        if isinstance(item, BaseException):
            raise item
        return item

    def iter_events(self, timeout: float | None = None, merge_text: bool = False) -> Iterator[Event | None]:
        """Events until the job is finished; yields None every ``timeout`` seconds of silence.

        ``merge_text``: text deltas already queued behind one are joined into it, so a reader that
        fell behind the engine (several streams, one GIL) catches up with one parse, one SSE event
        and one socket write instead of one per token. The text is the same, only cut in fewer pieces.
        """
        while True:
            try:
                event = self.next_event(timeout)
            except _Finished:
                return
            if merge_text and isinstance(event, TextDelta):
                event = self._merge_queued(event)
            yield event

    def _merge_queued(self, first: TextDelta) -> TextDelta:
        texts = [first.text]
        while self._held is _NOTHING:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, TextDelta):
                texts.append(item.text)
            else:
                self._held = item
        return first if len(texts) == 1 else TextDelta("".join(texts))


class _Finished(Exception):
    pass


class Scheduler:
    """FIFO queue of jobs in front of a single worker thread that owns ``backend``.

    The worker starts with :meth:`start` (:func:`make_scheduler` calls it), once every field of every
    subclass is set: a thread started in the constructor would run before a subclass finished its own.
    """

    def __init__(self, backend: Backend, queue_size: int = 16) -> None:
        self.backend = backend
        self.queue_size = queue_size
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._waiting = 0
        self._preparing = 0  # requests between arrival and submit(), see preparing()
        self._lock = threading.Lock()
        self.active: Job | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-{backend.name}", daemon=True)

    def start(self) -> Scheduler:
        """Start the worker; returns the scheduler, so building one reads ``Scheduler(backend).start()``."""
        self._thread.start()
        return self

    @property
    def depth(self) -> int:
        """Jobs waiting, not counting the one running."""
        return self._waiting

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Around a request's preparation (fit, render, tokenize) before :meth:`submit`: a batched
        worker about to start its first step waits for the requests being prepared (PREPARING_WAIT_S)."""
        with self._lock:
            self._preparing += 1
        try:
            yield
        finally:
            with self._lock:
                self._preparing -= 1

    def submit(self, prompt: Sequence[int], params: SamplingParams) -> Job:
        with self._lock:
            if self._waiting >= self.queue_size:
                raise Overloaded(f"{self._waiting} requests are already waiting for the model; try again shortly")
            self._waiting += 1
        job = Job(prompt, params)
        self._jobs.put(job)
        return job

    def _next_job(self) -> Job | None:
        """The next queued job (None: closing), blocking; the backend's deferred work runs once the queue
        has stayed empty for IDLE_WORK_AFTER_S."""
        if self.backend.idle_work_pending():
            try:
                return self._jobs.get(timeout=IDLE_WORK_AFTER_S)
            except queue.Empty:
                try:
                    self.backend.idle_work()
                except Exception:  # noqa: BLE001 - deferred work never takes the worker down
                    log.exception("the engine's deferred work failed")
        return self._jobs.get()

    def _run(self) -> None:
        while True:
            job = self._next_job()
            with self._lock:
                self._waiting -= 1 if job is not None else 0
            if job is None:
                return
            if job.cancel.is_set():
                job.events.put(Cancelled("client disconnected before generation started"))
                job.events.put(_DONE)
                continue
            self.active = job
            queued_s = time.perf_counter() - job.submitted_at
            try:
                for event in generate(self.backend, job.prompt, job.params, job.cancel, queued_s):
                    job.events.put(event)
            except Cancelled as exc:
                job.events.put(exc)
            except EngineError as exc:
                log.error("generation failed: %s", exc)
                job.events.put(exc)
            except Exception as exc:  # noqa: BLE001 - any backend bug becomes an api_error, not a dead worker
                log.exception("generation failed")
                job.events.put(EngineError(f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self.active = None
                job.events.put(_DONE)

    def close(self, timeout: float = 60.0) -> bool:
        """Cancel every job, stop the worker and wait for it; True once it has stopped.

        The backend must not be freed while the worker may still be inside it (a native crash), so
        callers free it only on True. Cancelled jobs stop within one token.
        """
        for job in self._in_flight():
            job.cancel.set()
        self._jobs.put(None)
        if self._thread.ident is None:  # never started: nothing runs inside the backend
            return True
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()

    def _in_flight(self) -> list[Job]:
        with self._jobs.mutex:
            queued = [job for job in self._jobs.queue if job is not None]
        return [job for job in (self.active, *queued) if job is not None]


class BatchScheduler(Scheduler):
    """Up to ``backend.parallel`` jobs generate together, one batched decode step at a time.

    Jobs start in arrival order as slots free up; a cancelled job leaves its slot before the next
    step, so a client that disconnects frees it within one token.
    """

    backend: BatchingBackend

    def __init__(self, backend: BatchingBackend, queue_size: int = 16) -> None:
        super().__init__(backend, queue_size)
        self.running: dict[int, tuple[Job, Generation]] = {}

    @property
    def depth(self) -> int:
        return self._waiting

    def _in_flight(self) -> list[Job]:
        return super()._in_flight() + [job for job, _ in list(self.running.values())]

    def _admit(self, block: bool, wait: float = 0.0) -> bool:
        """Move one queued job into a slot (waiting ``wait`` s when not blocking); False when closing."""
        if block:
            job = self._next_job()
        else:
            job = self._jobs.get(timeout=wait) if wait > 0 else self._jobs.get_nowait()
        with self._lock:
            self._waiting -= 1 if job is not None else 0
        if job is None:
            return False
        if job.cancel.is_set():
            self._end(job, Cancelled("client disconnected before generation started"))
            return True
        state = Generation(self.backend, len(job.prompt), job.params, time.perf_counter() - job.submitted_at)
        if state.done:
            self._end(job, *state.finish())
            return True
        try:
            match = self.backend.admit(id(job), job.prompt, job.params)
        except EngineError as exc:
            self._end(job, exc)
            return True
        self.running[id(job)] = (job, state)
        for event in state.on_match(match) if match is not None else ():
            job.events.put(event)
        return True

    def _end(self, job: Job, *events: object) -> None:
        for event in events:
            job.events.put(event)
        job.events.put(_DONE)

    def _finish(self, key: int, *events: object) -> None:
        job, _ = self.running.pop(key)
        self.backend.release(key)
        self._end(job, *events)

    def _gather_prepared(self) -> bool:
        """Admit requests still being prepared when the first one came (at most PREPARING_WAIT_S);
        False when closing."""
        deadline = time.perf_counter() + PREPARING_WAIT_S
        waited = False
        while len(self.running) < self.backend.parallel and time.perf_counter() < deadline:
            if not self._preparing:
                if not waited:
                    return True
                waited = False  # prepared just now: its submit() follows within a moment
                wait = GATHER_S
            else:
                waited, wait = True, 0.005
            try:
                if not self._admit(block=False, wait=wait):
                    return False
            except queue.Empty:
                if not waited:
                    return True
        return True

    def _gather_wait(self) -> float:
        """How long the idle worker waits for company: GATHER_S behind a short first request (a side
        request, with a turn likely right behind it), nothing behind a long one (a turn, which a short
        request arriving later joins at the next step), nor behind one whose whole prefill takes less
        than the window at the backend's measured speed (a GPU: the turn waits no longer behind that
        step than it would in the window, and a lone request starts at once, not GATHER_S later)."""
        rate = self.backend.prefill_tokens_per_s
        for job, _ in self.running.values():
            short = len(job.prompt) <= GATHER_PROMPT_TOKENS
            if short and not (rate and len(job.prompt) / rate < GATHER_S):
                return GATHER_S
        return 0.0

    def _run(self) -> None:
        backend = self.backend
        while True:
            idle = not self.running
            try:
                while len(self.running) < backend.parallel:
                    if not self._admit(block=not self.running, wait=self._gather_wait() if idle else 0.0):
                        for key in list(self.running):
                            self._finish(key, Cancelled("the server is shutting down"))
                        return
            except queue.Empty:
                pass
            if idle and self.running and not self._gather_prepared():
                for key in list(self.running):
                    self._finish(key, Cancelled("the server is shutting down"))
                return
            for key, (job, _) in list(self.running.items()):
                if job.cancel.is_set():
                    self._finish(key, Cancelled("client disconnected"))
            if not self.running:
                continue
            try:
                steps = backend.step()
            except Exception as exc:  # noqa: BLE001 - every running job gets the error; the worker lives on
                log.exception("batched generation failed")
                error = exc if isinstance(exc, EngineError) else EngineError(f"generation failed: {exc}")
                for key in list(self.running):
                    self._finish(key, error)
                continue
            for key, step in steps.items():
                job, state = self.running[key]
                events = state.finish() if step is None else state.on_step(step)
                if state.done:
                    self._finish(key, *events)
                else:
                    for event in events:
                        job.events.put(event)


def make_scheduler(backend: Backend, queue_size: int = 16) -> Scheduler:
    """A started batching scheduler for backends that decode several sequences at once, else a sequential one."""
    if isinstance(backend, BatchingBackend) and backend.parallel > 1:
        return BatchScheduler(backend, queue_size).start()
    return Scheduler(backend, queue_size).start()
