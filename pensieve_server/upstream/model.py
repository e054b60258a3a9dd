"""An upstream model as a pool entry, so /health, /v1/models, metrics and eviction treat it like any other.

The backend here never samples: requests go over HTTP (see :mod:`.service`). It carries the
client, the upstream's model id and the token counter; the "scheduler" only counts requests in
flight (the upstream queues and batches them itself).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from typing import cast

from pensieve_server.engine.base import Backend, EngineError, ModelInfo, SamplingParams, Step
from pensieve_server.engine.pool import LoadedModel
from pensieve_server.engine.scheduler import Scheduler
from pensieve_server.models.store import ModelEntry
from pensieve_server.settings import Settings
from pensieve_server.upstream import DISCOVER, ENGINE
from pensieve_server.upstream.client import UpstreamClient
from pensieve_server.upstream.tokens import CHARS_PER_TOKEN, TokenCounter

_clients: dict[tuple[str, str, str, float], UpstreamClient] = {}
_clients_lock = threading.Lock()


def shared_client(settings: Settings) -> UpstreamClient:
    """One client (one connection pool) per upstream, shared by its models and never closed under a
    stream that is still reading: pool eviction only forgets the model."""
    key = (settings.upstream_url, settings.upstream_api_key, settings.upstream_api, settings.upstream_timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = UpstreamClient(settings.upstream_url, settings.upstream_api_key, settings.upstream_api,
                                    settings.upstream_timeout)
            _clients[key] = client
        return client


class UpstreamBackend(Backend):
    """The upstream's model as far as the pool is concerned; the work happens in :mod:`.service`."""

    name = ENGINE

    def __init__(self, client: UpstreamClient, model: str, context_length: int) -> None:
        self.client = client
        self.requested_model = model
        self.device = f"{client.api} API at {client.display}"
        # vision and every other capability are the upstream's to accept or refuse
        self.info = ModelInfo(name=model, context_length=context_length, chat_template="", supports_vision=True)
        self.tokens = TokenCounter(client, model)

    @property
    def model_id(self) -> str:
        """The id sent upstream: the configured one, or what the upstream lists first."""
        return self.client.first_model() if self.requested_model == DISCOVER else self.requested_model

    def tokenize(self, text: str) -> list[int]:
        """Placeholder ids, as many as the documented estimate (``len(...)`` is all callers use)."""
        return [0] * math.ceil(len(text) / CHARS_PER_TOKEN)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return ""

    def is_stop_token(self, token: int) -> bool:
        return False

    def stream(self, prompt: Sequence[int], params: SamplingParams, cancel: threading.Event) -> Iterator[Step]:
        raise EngineError("an upstream model answers over HTTP, not through a local scheduler")


class InFlight:
    """Stands where a Scheduler would: counts upstream requests in flight for /health and /metrics."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        return self._count

    def enter(self) -> None:
        with self._lock:
            self._count += 1

    def leave(self) -> None:
        with self._lock:
            self._count = max(0, self._count - 1)

    def submit(self, *args: object, **kwargs: object) -> None:
        raise EngineError("an upstream model answers over HTTP, not through a local scheduler")

    def close(self) -> None:
        """Nothing to stop: requests in flight finish on their own threads."""


def load_upstream(settings: Settings, name: str) -> LoadedModel:
    """The pool entry for ``name`` on the configured upstream (no network: the upstream may be down now)."""
    client = shared_client(settings)
    backend = UpstreamBackend(client, name, settings.upstream_context_length)
    entry = ModelEntry(name, ENGINE, client.display, ENGINE, settings.upstream_context_length, 0)
    return LoadedModel(entry, ENGINE, backend, cast(Scheduler, InFlight()))


def upstream_names(settings: Settings) -> list[str]:
    """The names this server lists in upstream mode: the default and any tier targets."""
    names: list[str] = []
    for name in (settings.default_model, *settings.tiers.values()):
        if name and name not in names:
            names.append(name)
    return names
