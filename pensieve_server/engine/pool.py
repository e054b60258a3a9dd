"""Loaded models by name: each model gets one backend and one scheduler, loaded on first use."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pensieve_server.engine.base import Backend, ModelInfo, ModelLoadError
from pensieve_server.engine.scheduler import Scheduler, make_scheduler
from pensieve_server.models.store import ModelEntry, ModelError, ModelStore
from pensieve_server.settings import Settings

log = logging.getLogger(__name__)


class Tokenizer:
    """The backend's tokenizer for HTTP threads, one caller at a time.

    A backend is not thread-safe (llama.cpp's keeps a memo of recent texts in a plain OrderedDict),
    and Waitress tokenizes prompts on several threads at once; the engine's worker never tokenizes.
    Tokenizing stays off the worker thread, so a long prompt never waits behind a decode.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()

    def tokenize(self, text: str) -> list[int]:
        with self._lock:
            return self._backend.tokenize(text)

    def count(self, text: str) -> int:
        return len(self.tokenize(text))


@dataclass
class LoadedModel:
    entry: ModelEntry
    engine: str
    backend: Backend
    scheduler: Scheduler
    loaded_at: float = field(default_factory=time.time)
    tokenizer: Tokenizer = field(init=False)

    def __post_init__(self) -> None:
        self.tokenizer = Tokenizer(self.backend)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def context_length(self) -> int:
        return self.backend.info.context_length

    @property
    def info(self) -> ModelInfo:
        return self.backend.info

    def close(self) -> None:
        if self.scheduler.close():
            self.backend.close()
        else:  # freeing it under a running native call would crash the process
            log.warning("%s: the engine did not stop in time; its memory is freed at exit", self.entry.name)


class ModelPool:
    """Keeps at most ``max_loaded`` models in memory, least recently used evicted first.

    The pool's lock guards only its table: a model loads (or closes) outside it, under a lock of its
    own, so /health, /v1/models and requests for other models go on meanwhile, and two requests for
    one model wait for a single load.
    """

    def __init__(self, settings: Settings, store: ModelStore, max_loaded: int = 2) -> None:
        self.settings = settings
        self.store = store
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}  # one per name being loaded
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Installed models plus any registered in-process with :meth:`add`."""
        names = [entry.name for entry in self.store.list()]
        with self._lock:
            names += [name for name in self._loaded if name not in names]
        return names

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._touch(name)
            if model is not None:
                return model
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # one load per name; the others wait here for it, not on the pool
            with self._lock:
                model = self._touch(name)
            if model is not None:
                return model
            try:
                model = self._load(name)
            except BaseException:
                with self._lock:
                    self._loading.pop(name, None)
                raise
            self._keep(name, model)
            return model

    def _touch(self, name: str) -> LoadedModel | None:
        """The loaded model, marked as the most recently used (call with the lock held)."""
        model = self._loaded.get(name)
        if model is not None:
            self._loaded.move_to_end(name)
        return model

    def _keep(self, name: str, model: LoadedModel) -> None:
        """Put ``model`` in the table; the least recently used beyond ``max_loaded`` close outside the lock."""
        evicted = []
        with self._lock:
            self._loaded[name] = model
            self._loading.pop(name, None)  # in the table first: a request arriving now finds it there
            while len(self._loaded) > self.max_loaded:
                evicted.append(self._loaded.popitem(last=False)[1])
        for old in evicted:
            log.info("unloading %s", old.entry.name)
            old.close()

    def add(self, name: str, backend: Backend, engine: str = "custom") -> LoadedModel:
        """Register an already-built backend (tests use a scripted one; also handy for embedding)."""
        entry = ModelEntry(name, "custom", "", engine, backend.info.context_length, 0, "", True)
        model = LoadedModel(entry, engine, backend, make_scheduler(backend, self.settings.queue_size))
        with self._lock:
            self._loaded[name] = model
        return model

    def _load(self, name: str) -> LoadedModel:
        from pensieve_server.engine.factory import resolve_engine

        try:
            entry = self.store.get(name)
        except ModelError as exc:
            raise ModelLoadError(str(exc)) from None
        engine = resolve_engine(self.settings.engine, entry)
        started = time.perf_counter()
        backend = self.load_backend(entry, engine)
        log.info("loaded %s on %s (%s) in %.1fs", name, engine, backend.device, time.perf_counter() - started)
        from pensieve_server.engine.disk_states import attach_disk_states

        attach_disk_states(backend, entry.weights, self.settings.paths.prefix_states_dir, self.settings.disk_cache_bytes)
        backend.prepare_constraints()
        return LoadedModel(entry, engine, backend, make_scheduler(backend, self.settings.queue_size))

    def load_backend(self, entry: ModelEntry, engine: str) -> Backend:
        """The engine factory, called outside the pool's lock (tests wrap it to watch a load in progress)."""
        from pensieve_server.engine.factory import load_backend

        return load_backend(entry, engine, self.store, self.settings.context_length,
                            self.settings.prefix_cache_bytes, self.settings.parallel,
                            self.settings.compute_threads)

    def close(self) -> None:
        with self._lock:
            models = list(self._loaded.values())
            self._loaded.clear()
        for model in models:
            model.close()
