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


@dataclass
class LoadedModel:
    entry: ModelEntry
    engine: str
    backend: Backend
    scheduler: Scheduler
    loaded_at: float = field(default_factory=time.time)

    @property
    def info(self) -> ModelInfo:
        return self.backend.info

    def count_tokens(self, text: str) -> int:
        return len(self.backend.tokenize(text))

    def close(self) -> None:
        if self.scheduler.close():
            self.backend.close()
        else:  # freeing it under a running native call would crash the process
            log.warning("%s: the engine did not stop in time; its memory is freed at exit", self.entry.name)


class ModelPool:
    """Keeps at most ``max_loaded`` models in memory, least recently used evicted first."""

    def __init__(self, settings: Settings, store: ModelStore, max_loaded: int = 2) -> None:
        self.settings = settings
        self.store = store
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Installed models (the upstream's, when forwarding) plus any registered in-process with :meth:`add`."""
        from pensieve_server.upstream import is_upstream

        if is_upstream(self.settings):
            from pensieve_server.upstream.model import upstream_names

            names = upstream_names(self.settings)  # not every name a client sent upstream
            with self._lock:
                return names + [n for n, m in self._loaded.items() if n not in names and m.engine != "upstream"]
        names = [entry.name for entry in self.store.list()]
        with self._lock:
            names += [name for name in self._loaded if name not in names]
        return names

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            model = self._load(name)
            self._loaded[name] = model
            while len(self._loaded) > self.max_loaded:
                _, old = self._loaded.popitem(last=False)
                log.info("unloading %s", old.entry.name)
                old.close()
            return model

    def add(self, name: str, backend: Backend, engine: str = "custom") -> LoadedModel:
        """Register an already-built backend (tests use a scripted one; also handy for embedding)."""
        entry = ModelEntry(name, "custom", "", engine, backend.info.context_length, 0, "", True)
        model = LoadedModel(entry, engine, backend, make_scheduler(backend, self.settings.queue_size))
        with self._lock:
            self._loaded[name] = model
        return model

    def _load(self, name: str) -> LoadedModel:
        from pensieve_server.engine.select import load_backend, resolve_engine
        from pensieve_server.upstream import is_upstream

        if is_upstream(self.settings):
            from pensieve_server.upstream.model import load_upstream

            return load_upstream(self.settings, name)
        try:
            entry = self.store.get(name)
        except ModelError as exc:
            raise ModelLoadError(str(exc)) from None
        engine = resolve_engine(self.settings.engine, entry)
        started = time.perf_counter()
        backend = load_backend(entry, engine, self.store, self.settings.context_length,
                               self.settings.prefix_cache_bytes, self.settings.parallel,
                               self.settings.compute_threads)
        log.info("loaded %s on %s (%s) in %.1fs", name, engine, backend.device, time.perf_counter() - started)
        from pensieve_server.engine.disk_states import attach_disk_states

        attach_disk_states(backend, entry.weights, self.settings.paths.prefix_states_dir, self.settings.disk_cache_bytes)
        return LoadedModel(entry, engine, backend, make_scheduler(backend, self.settings.queue_size))

    def close(self) -> None:
        with self._lock:
            for model in self._loaded.values():
                model.close()
            self._loaded.clear()
