"""Run the real app on the real Waitress server on an ephemeral loopback port, in a thread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from pensieve_server.app import create_app
from pensieve_server.engine.base import Backend
from pensieve_server.engine.pool import ModelPool
from pensieve_server.models.store import ModelStore
from pensieve_server.runner import build_server, run_in_thread, stop_server
from pensieve_server.settings import Settings, load_settings

TEST_TOKEN = "pensieve-test-token"


@dataclass
class RunningServer:
    base_url: str
    token: str
    settings: Settings
    pool: ModelPool
    app: object

    def client(self, **kwargs) -> httpx.Client:
        headers = {"x-api-key": self.token, **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=kwargs.pop("timeout", 120), **kwargs)


@contextmanager
def running_server(
    backends: dict[str, Backend] | None = None,
    pool: ModelPool | None = None,
    **overrides,
) -> Iterator[RunningServer]:
    """Serve ``backends`` (name → scripted/real backend) or a given ``pool`` until the block ends.

    The first backend's name becomes the default model unless ``default_model`` is overridden.
    """
    settings = load_settings({"auth_token": TEST_TOKEN, "port": 0})
    if backends and "default_model" not in overrides:
        overrides["default_model"] = next(iter(backends))
    settings = settings.replace(**overrides)
    if pool is None:
        pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
    else:
        pool.settings = settings
    for name, backend in (backends or {}).items():
        pool.add(name, backend, engine=backend.name)
    app = create_app(settings, pool)
    server = build_server(app, settings, port=0)
    thread = run_in_thread(server)
    try:
        yield RunningServer(f"http://127.0.0.1:{server.effective_port}", TEST_TOKEN, settings, pool, app)
    finally:
        stop_server(server)
        thread.join(timeout=5)


@contextmanager
def embedded_llamacpp_server(home: Path, **overrides) -> Iterator[RunningServer]:
    """The embedded model on llama.cpp behind the real Waitress server, with Pensieve's files under ``home``.

    Greedy sampling (temperature 0) keeps the 135M model's answers reproducible for the same prompt.
    """
    from pensieve_server.models.embedded import EMBEDDED_NAME

    previous = os.environ.get("PENSIEVE_HOME")
    os.environ["PENSIEVE_HOME"] = str(home)
    try:
        settings = load_settings({"engine": "llamacpp"})
        pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
        options = {"engine": "llamacpp", "default_model": EMBEDDED_NAME, "temperature": 0.0, **overrides}
        with running_server(pool=pool, **options) as server:
            pool.get(EMBEDDED_NAME)
            yield server
        pool.close()
    finally:
        if previous is None:
            os.environ.pop("PENSIEVE_HOME", None)
        else:
            os.environ["PENSIEVE_HOME"] = previous
