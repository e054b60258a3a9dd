"""Continuous batching on llama.cpp: several requests decode together in one context.

One llama.cpp context with one KV stream per sequence holds ``parallel`` sequences ("slots", as in
llama.cpp's own server). Every :meth:`LlamaCppBatchBackend.step` builds one ``llama_batch`` with
the next token of each decoding sequence plus a chunk of any prompt still being prefilled, runs
one ``llama_decode`` and samples each sequence from its own row of logits. A long prompt is
prefilled in chunks between decode steps, so the other streams keep flowing while it loads.

Slots keep their tokens after a request ends: a new request takes the free slot sharing the longest
prefix with its prompt, or copies that prefix from a busy slot (a memory copy, much faster than prefilling it
again), so Claude Code's system prompt and tools are prefilled once for its parallel requests.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pensieve_server.engine import llamacpp_log, llamacpp_state
from pensieve_server.engine.base import EngineError, ModelLoadError, PrefixMatch, SamplingParams, Step
from pensieve_server.engine.batching import BatchingBackend
from pensieve_server.engine.constraint import ConstrainedRun
from pensieve_server.engine.llamacpp_backend import N_BATCH, LlamaCppBackend
from pensieve_server.engine.sampling import Sampler, make_sampler
from pensieve_server.engine.saved_states import common_prefix, prompt_keep
from pensieve_server.models.store import ModelEntry


@dataclass
class Slot:
    """One llama.cpp sequence id and the tokens its KV cells hold."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    last_used: int = 0
    copy_pending: bool = False  # a copy from another slot's KV stream that llama.cpp applies at the next decode
    offer_pending: bool = False  # its request ended: offer its state to the disk once the engine is idle


@dataclass
class Running:
    """A request in a slot: the prompt left to prefill, then one pending token per decode step."""

    slot: Slot
    sampler: Sampler  # numpy, on llama.cpp's logits (sampling.py)
    context_limit: int
    pending: list[int]
    cached: int
    decoder: Any
    first: bool = True
    constraint: ConstrainedRun | None = None


OUTPUT_ROOM = 1024  # room for the answer in a state buffer reserved before its max_tokens is known
PREFILL_SAMPLE_TOKENS = 64  # a step carrying at least this many prompt tokens measures prefill_tokens_per_s


def prefill_plan(running: Iterable[tuple[Hashable, Running]], budget: int) -> tuple[list[tuple[Hashable, Running]], int]:
    """The order of one step's rows and its prompt-token budget.

    Decoding requests come first (one token each); prompts follow shortest remaining prefill first.
    When the shortest prompts can finish their prefill in this step, the step carries only them (and
    others at most twice as long), no chunk of longer ones: a warm turn with a few new tokens then
    gets its first token after a small step instead of waiting behind a side request's cold chunk
    (Claude Code sends its title request 1-5 ms before the turn). Longer prompts go on next step.
    """
    order = sorted(running, key=lambda kv: (len(kv[1].pending) > 1, len(kv[1].pending)))
    prompts = [len(r.pending) for _, r in order if len(r.pending) > 1]
    if not prompts or prompts[0] > budget:
        return order, budget
    finishing = 0
    for size in prompts:
        if size > 2 * prompts[0] or finishing + size > budget:
            break
        finishing += size
    return order, finishing if finishing < sum(prompts) else budget


class LlamaCppBatchBackend(BatchingBackend, LlamaCppBackend):
    """The llama.cpp backend with ``parallel`` slots; :class:`BatchScheduler` drives :meth:`step`."""

    def __init__(self, llama: Any, info: Any, device: str, parallel: int, ctx: Any) -> None:
        super().__init__(llama, info, device, cache_bytes_limit=0)
        self.parallel = parallel
        self._ctx = ctx
        self._slots = [Slot(i) for i in range(parallel)]
        self._running: dict[Hashable, Running] = {}
        self._batch = self._lib.llama_batch_init(N_BATCH + parallel, 0, 1)
        self._kv_bytes_per_token = 0
        self._admitted = 0
        self._n_vocab = llama.n_vocab()

    @classmethod
    def load_batched(cls, entry: ModelEntry, parallel: int, context_length: int = 0,
                     n_threads: int | None = None, device: str | None = None) -> LlamaCppBatchBackend:
        """Load ``entry`` with a context of ``parallel`` × the per-request context length (``device``: as
        :meth:`LlamaCppBackend.load` takes it)."""
        # Llama() makes a context of its own; keep it tiny, generation runs in the batched one.
        single = LlamaCppBackend.load(entry, 64, n_threads=n_threads, cache_bytes_limit=0, device=device)
        lib, llama = single._lib, single._llama
        per_request = context_length or llama._model.n_ctx_train()
        params = llama.context_params
        params.n_ctx = per_request * parallel
        params.n_seq_max = parallel
        # One KV stream per slot. A unified cache makes every sequence's attention scan every slot's
        # cells: measured here, 14 tok/s instead of 81 for one stream once another slot held 2k tokens.
        params.kv_unified = False
        params.n_batch = params.n_ubatch = N_BATCH + parallel
        with llamacpp_log.python_log_while_loading(lib):
            ctx = lib.llama_init_from_model(llama.model, params)
        if not ctx:
            single.close()
            raise ModelLoadError(f"llama.cpp could not make a {parallel}-slot context for {entry.name}; "
                                 "lower `parallel` or `context_length`")
        batched = cls(llama, replace(single.info, context_length=per_request), single.device, parallel, ctx)
        batched.gpu_layers = single.gpu_layers
        return batched

    # -- the batch API -------------------------------------------------------------------------------
    def admit(self, key: Hashable, prompt: Sequence[int], params: SamplingParams) -> PrefixMatch:
        """Start ``prompt`` in a free slot, reusing the longest cached prefix; prefill happens in step()."""
        self.check_prompt(prompt)
        free = [slot for slot in self._slots if not slot.busy]
        if not free:
            raise EngineError("no free slot")  # the scheduler admits at most `parallel` requests
        tokens = list(prompt)
        slot = self._pick(free, tokens)
        shared = self._shared(slot, tokens)
        if slot.offer_pending and self.disk is not None and len(slot.tokens) - shared >= self.disk.save_step:
            # This prompt would discard much of a state not yet offered: copied now if the buffer is
            # free (milliseconds), else done without, rather than delaying this request.
            self._offer_slot_to_disk(slot)
        slot.offer_pending = False  # else what it keeps is offered, extended, when this request ends
        donor = max(self._slots, key=lambda s: self._shared(s, tokens))
        from_donor = self._shared(donor, tokens) if donor is not slot else 0
        # The disk first, and only when it beats the donor: llama.cpp applies a copy between KV streams
        # at the next decode, so a copy queued before a restore would overwrite the restored state.
        shared_disk, restored = self._sequence_from_disk(tokens, max(shared, from_donor), self._ctx, slot.seq_id)
        if restored is not None:  # restored, or refused (the sequence is then empty)
            slot.tokens, shared = restored.tolist(), shared_disk
        memory = self._lib.llama_get_memory(self._ctx)
        if (restored is None or not len(restored)) and from_donor > shared + 16:
            # Slots are separate KV streams: llama.cpp copies whole sequences only, then trims.
            self._lib.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
            self._lib.llama_memory_seq_cp(memory, donor.seq_id, slot.seq_id, -1, -1)
            slot.tokens, shared = tokens[:from_donor], from_donor
            slot.copy_pending = True
        keep = prompt_keep(shared, len(tokens))
        self._lib.llama_memory_seq_rm(memory, slot.seq_id, keep, -1)
        slot.tokens = slot.tokens[:keep]
        slot.busy = True
        self._admitted += 1
        slot.last_used = self._admitted
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._running[key] = Running(slot, make_sampler(params), self.info.context_length,
                                     tokens[keep:], keep, decoder, constraint=self._constrained(params))
        self._reserve_state_room(len(tokens) + params.max_tokens, self._kv_bytes_per_token)
        return PrefixMatch(keep, min(self.restored_from_disk, keep))

    def release(self, key: Hashable) -> None:
        """End a request; its slot keeps the tokens for the next prompt that shares them."""
        running = self._running.pop(key, None)
        if running is not None:
            running.slot.busy = False
            running.slot.offer_pending = True  # copied out when idle, not before the next request

    def idle_work_pending(self) -> bool:
        return self.disk is not None and any(slot.offer_pending and not slot.busy for slot in self._slots)

    def idle_work(self) -> None:
        """Offer the states of finished requests to the disk store (a copy of their KV cells); one the
        buffer cannot take yet (a write in flight) waits for the next idle moment."""
        self._offer_finished(wait_for_writer=False)

    def _offer_finished(self, wait_for_writer: bool) -> None:
        for slot in self._slots:
            if slot.offer_pending and not slot.busy:
                if wait_for_writer and self.disk is not None:
                    self.disk.flush(30)  # the buffer comes back when the write in flight ends
                if self._offer_slot_to_disk(slot):
                    slot.offer_pending = False

    def active(self) -> int:
        return len(self._running)

    def step(self) -> dict[Hashable, Step | None]:
        """One ``llama_decode`` over every running request; a Step for each that sampled a token.

        A request whose context is full maps to None: the scheduler finishes it.
        """
        batch, lib = self._batch, self._lib
        n = 0
        rows: list[tuple[Hashable, Running]] = []  # the requests sampled this step, in batch order
        full: dict[Hashable, Step | None] = {}
        order, budget = prefill_plan(self._running.items(), N_BATCH)
        chosen: list[tuple[Hashable, Running, list[int]]] = []
        for key, running in order:
            if len(running.slot.tokens) + 1 >= running.context_limit:
                full[key] = None
            elif len(running.pending) == 1:
                chosen.append((key, running, running.pending))
            elif budget > 0:
                chosen.append((key, running, running.pending[:budget]))
                budget -= len(chosen[-1][2])
        # In slot order: llama.cpp splits a batch over separate KV streams into one compute pass per run
        # of consecutive sequence ids (llama_batch_allocr::split_equal), so 4 streams in the order 3, 2,
        # 1, 0 took 4 passes where 0, 1, 2, 3 take one (a 4-stream step on the VM: 37 ms against 24).
        chosen.sort(key=lambda item: item[1].slot.seq_id)
        for key, running, take in chosen:
            slot = running.slot
            for index, token in enumerate(take):
                batch.token[n] = token
                batch.pos[n] = len(slot.tokens) + index
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq_id
                last = index == len(take) - 1 and len(take) == len(running.pending)
                batch.logits[n] = 1 if last else 0
                if last:
                    rows.append((key, running))
                n += 1
            slot.tokens.extend(take)
            running.pending = running.pending[len(take):]
        if n == 0:
            return full
        batch.n_tokens = n
        started = time.perf_counter()
        status = lib.llama_decode(self._ctx, batch)
        if status != 0:
            self._reset_all()
            raise EngineError(f"llama.cpp failed to decode a batch of {n} tokens (status {status})")
        for slot in self._slots:
            slot.copy_pending = False  # the decode applied every queued copy first
        steps = full
        logits = self._rows_logits(len(rows))  # waits for the GPU: the step's compute ends here
        if n - len(rows) >= PREFILL_SAMPLE_TOKENS:
            rate = n / max(time.perf_counter() - started, 1e-6)
            previous = self.prefill_tokens_per_s
            self.prefill_tokens_per_s = rate if previous is None else (previous + rate) / 2
        for index, (key, running) in enumerate(rows):
            run = running.constraint
            if run is not None and run.active:
                run.mask_logits(logits[index])
            token = running.sampler.sample(logits[index])
            piece = self._pieces.get(token)
            if piece is None:
                piece = self._piece(token)
            if run is not None:
                run.accept(token, piece)
            text = running.decoder.decode(piece)
            steps[key] = Step(token, text, running.cached if running.first else 0)
            running.first = False
            running.pending = [token]  # decoded (and cached) with the next step
        self._note_kv_bytes()
        return steps

    def _rows_logits(self, rows: int) -> np.ndarray:
        """Every sampled row's logits from one call (it waits for the GPU), as a writable view: llama.cpp
        stores them contiguously in batch order, one row per token with ``batch.logits`` set."""
        if not rows:
            return np.empty((0, self._n_vocab), dtype=np.float32)
        return np.ctypeslib.as_array(self._lib.llama_get_logits(self._ctx), shape=(rows, self._n_vocab))

    # -- bookkeeping -----------------------------------------------------------------------------------
    def _pick(self, free: list[Slot], tokens: list[int]) -> Slot:
        """The free slot sharing most of its tokens with ``tokens``; else the least recently used one,
        so that one conversation does not wipe out another's cache for a few shared tokens."""
        best = max(free, key=lambda s: self._shared(s, tokens))
        shared = self._shared(best, tokens)
        if shared and shared * 2 >= len(best.tokens):
            return best
        return min(free, key=lambda s: s.last_used)

    def _shared(self, slot: Slot, tokens: list[int]) -> int:
        if not slot.tokens:
            return 0
        return common_prefix(np.asarray(slot.tokens, dtype=np.intc), np.asarray(tokens, dtype=np.intc))

    def _offer_slot_to_disk(self, slot: Slot) -> bool:
        """Offer ``slot``'s state to the disk store; False when it has to wait for the buffer."""
        disk = self.disk
        if disk is None or self._closed or slot.copy_pending or not disk.wants(slot.tokens):
            return True  # (a copy still pending: the slot's KV data is not there yet)
        return self._lend_to_disk(list(slot.tokens), self._ctx, slot.seq_id)

    def _reset_all(self) -> None:
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        for slot in self._slots:
            slot.tokens = []

    def _note_kv_bytes(self) -> None:
        if not self._kv_bytes_per_token:
            slot = max(self._slots, key=lambda s: len(s.tokens))
            if len(slot.tokens) >= 16:
                size = llamacpp_state.state_size(self._lib, self._ctx, slot.seq_id)
                self._kv_bytes_per_token = size // len(slot.tokens)
                for running in self._running.values():  # admitted before the size was known
                    self._reserve_state_room(len(running.slot.tokens) + len(running.pending) + OUTPUT_ROOM,
                                             self._kv_bytes_per_token)

    def cache_bytes(self) -> int:
        if self._closed:
            return 0
        return sum(len(slot.tokens) for slot in self._slots) * self._kv_bytes_per_token

    def close(self) -> None:
        if not self._closed:
            for key in list(self._running):
                self.release(key)
            self._offer_finished(wait_for_writer=True)  # states not yet offered, before the context is freed
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
        super().close()
