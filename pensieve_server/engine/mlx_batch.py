"""Continuous batching on MLX: mlx-lm's ``BatchGenerator`` decodes up to ``parallel`` requests together.

Each :meth:`MlxBatchBackend.step` is one ``BatchGenerator.next()``: one decode step for every
request that is generating, plus one chunk of the prompts being prefilled, so a long prompt never
stops the other streams for long. mlx-lm pads and merges the requests' caches into one batch cache.

Prefix reuse: when a request ends (or is cancelled, even mid-prefill) its cache is taken out of the
batch and kept in the byte-bounded :class:`SavedStates` store; a new request starts from the saved
cache sharing the longest prefix with its prompt. Claude Code's next turn, or its parallel requests
after the first one has finished, therefore prefill only what is new.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from pensieve_server.engine.base import EngineError, PrefixMatch, SamplingParams, Step
from pensieve_server.engine.batching import BatchingBackend
from pensieve_server.engine.mlx_backend import PREFILL_STEP, MlxBackend, _nbytes
from pensieve_server.engine.saved_states import RESTORE_MIN_GAIN, prompt_keep
from pensieve_server.models.store import ModelEntry, ModelStore

log = logging.getLogger(__name__)


@dataclass
class _Request:
    """One admitted request: its BatchGenerator uid and what the first Step must report."""

    uid: int
    cached: int
    text_of: Callable[[int], str]
    first: bool = True
    # Set when mlx-lm ended the sequence itself (its context is full): the cache it handed back.
    ended: tuple[list[Any], list[int]] | None = None


def _prefix_cache(layers: list[Any], keep: int) -> list[Any] | None:
    """The first ``keep`` tokens of a saved cache, leaving the saved one untouched; None if it cannot be cut."""
    from mlx_lm.models.cache import KVCache, can_trim_prompt_cache, trim_prompt_cache

    if all(type(layer) is KVCache for layer in layers):
        cut = []
        for layer in layers:  # slices share memory with the saved arrays until mlx-lm merges them
            piece = KVCache()
            piece.keys = layer.keys[..., :keep, :]
            piece.values = layer.values[..., :keep, :]
            piece.offset = keep
            cut.append(piece)
        return cut
    offset = int(getattr(layers[0], "offset", 0)) if layers else 0
    if offset == keep:
        return copy.deepcopy(layers)
    if not can_trim_prompt_cache(layers):
        return None
    layers = copy.deepcopy(layers)
    trim_prompt_cache(layers, offset - keep)
    return layers


class MlxBatchBackend(BatchingBackend, MlxBackend):
    """The MLX backend with ``parallel`` requests in flight; :class:`BatchScheduler` drives :meth:`step`."""

    def __init__(self, *args: Any, parallel: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parallel = parallel
        self._running: dict[Hashable, _Request] = {}
        self._keys: dict[int, Hashable] = {}  # BatchGenerator uid → request key
        self._generator: Any = self._new_generator()
        self._batch_bytes = 0  # the batch's caches, measured by the worker after each step

    @classmethod
    def load_batched(cls, entry: ModelEntry, store: ModelStore, parallel: int, context_length: int = 0,
                     cache_bytes_limit: int = 0, device: str | None = None) -> MlxBatchBackend:
        backend = cls.load(entry, store, context_length, cache_bytes_limit=cache_bytes_limit, device=device,
                           parallel=parallel)
        assert isinstance(backend, MlxBatchBackend)
        return backend

    def _new_generator(self) -> Any:
        from mlx_lm.generate import BatchGenerator

        return BatchGenerator(self._model, completion_batch_size=self.parallel, prefill_batch_size=self.parallel,
                              prefill_step_size=PREFILL_STEP)

    # -- the batch API -------------------------------------------------------------------------------
    def admit(self, key: Hashable, prompt: Sequence[int], params: SamplingParams) -> PrefixMatch:
        if self._closed:
            raise EngineError("the model was unloaded")
        self.check_prompt(prompt)
        if len(self._running) >= self.parallel:
            raise EngineError("no free slot")  # the scheduler admits at most `parallel` requests
        tokens = [int(t) for t in prompt]
        cache, cached = self._saved_prefix(tokens)
        cache, cached = self._disk_prefix(tokens, cache, cached)
        # mlx-lm's token history is the whole prompt (cached part included), then the answer.
        sampler, processors = self._sampling(params, len(tokens))
        (uid,) = self._generator.insert(
            [tokens[cached:]],
            max_tokens=[self.info.context_length - len(tokens)],  # mlx-lm ends the sequence at a full context
            caches=[cache],
            all_tokens=[tokens[:cached]],
            samplers=[sampler],
            logits_processors=[processors],
        )
        self._running[key] = _Request(uid, cached, self._text_stream())
        self._keys[uid] = key
        return PrefixMatch(cached, min(self.restored_from_disk, cached))

    def step(self) -> dict[Hashable, Step | None]:
        steps: dict[Hashable, Step | None] = {key: None for key, r in self._running.items() if r.ended is not None}
        if len(steps) == len(self._running):
            return steps
        try:
            _, generated = self._generator.next()
        except Exception as exc:
            self._abandon_batch()
            raise EngineError(f"MLX failed in a batched step: {type(exc).__name__}: {exc}") from exc
        for response in generated:
            key = self._keys.get(response.uid)
            request = self._running.get(key) if key is not None else None
            if request is None:
                continue
            token = int(response.token)
            steps[key] = Step(token, request.text_of(token), request.cached if request.first else 0)
            request.first = False
            if response.finish_reason is not None:  # only "length": we pass no stop tokens
                request.ended = (response.prompt_cache, list(response.all_tokens))
        self._batch_bytes = int(self._generator.prompt_cache_nbytes)
        return steps

    def release(self, key: Hashable) -> None:
        request = self._running.pop(key, None)
        if request is None:
            return
        self._keys.pop(request.uid, None)
        if request.ended is not None:
            layers, tokens = request.ended
        else:
            removed = self._generator.remove([request.uid], return_prompt_caches=True)
            layers, tokens = removed.get(request.uid, ([], []))
        self._keep(layers, list(tokens))
        self._offer_to_disk(layers, list(tokens))
        if not self._running:
            self._batch_bytes = 0

    def active(self) -> int:
        return len(self._running)

    # -- prefix cache --------------------------------------------------------------------------------
    def _saved_prefix(self, tokens: list[int]) -> tuple[list[Any] | None, int]:
        """A cache holding the longest saved prefix of ``tokens`` and its length; (None, 0) for none.

        At least one prompt token is left to evaluate, since sampling needs fresh logits.
        """
        index, shared = self._saved.best(tokens)
        keep = prompt_keep(shared, len(tokens))
        if index < 0 or keep < RESTORE_MIN_GAIN:
            return None, 0
        saved = self._saved.take(index)
        cache = _prefix_cache(saved.payload, keep)
        return (cache, keep) if cache is not None else (None, 0)

    def _disk_prefix(self, tokens: list[int], cache: list[Any] | None, cached: int) -> tuple[list[Any] | None, int]:
        """The disk state's prefix of ``tokens`` when it beats the ``cached`` one from memory (kept in memory too)."""
        restored = self._restore_from_disk(tokens, cached)
        if restored is None:
            return cache, cached
        layers, saved = restored
        keep = prompt_keep(self.restored_from_disk, len(tokens))
        self._saved.add(saved, layers, _nbytes(layers))
        cut = _prefix_cache(layers, keep)
        if cut is None:
            self.restored_from_disk = 0
            return cache, cached
        return cut, keep

    def _keep(self, layers: list[Any], tokens: list[int]) -> None:
        """Save a finished request's cache for later prompts that share its tokens."""
        import mlx.core as mx

        if not tokens or self._closed or self._saved.covers(tokens):
            return
        offset = int(getattr(layers[0], "offset", 0)) if layers else 0
        if offset != len(tokens):
            log.debug("not saving a cache of %d tokens recorded as %d", offset, len(tokens))
            return
        mx.eval([layer.state for layer in layers])
        self._saved.add(tokens, layers, _nbytes(layers))

    def _abandon_batch(self) -> None:
        """After a failed step nothing in the batch can be trusted: start an empty generator."""
        for request in self._running.values():
            request.ended = ([], [])
        self._keys.clear()
        self._generator.close()
        self._generator = self._new_generator()

    def cache_bytes(self) -> int:
        if self._closed:
            return 0
        # Read from HTTP threads (status, /metrics): never walk the generator while the worker changes it.
        return self._saved.bytes + self._batch_bytes

    def close(self) -> None:
        if not self._closed:
            self._running.clear()
            self._keys.clear()
            self._generator.close()
        super().close()
