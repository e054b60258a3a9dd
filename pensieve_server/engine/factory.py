"""Which engine runs a model here, and loading it on the device the probes found.

``auto`` picks the fastest engine that can run the model here: MLX on an Apple Silicon GPU, then
llama.cpp when its build offloads to a GPU this machine has, then MLX on a CUDA GPU, then llama.cpp
on the CPU; MLX on a CPU is far slower than llama.cpp, so it comes last. Which engines can run a
model file at all is :func:`pensieve_server.models.formats.engines.engines_for`'s answer (MLX runs a
GGUF only when its architecture converts). The device probes live in the leaf module
:mod:`pensieve_server.engine.devices`; this factory asks them and passes the device to the backend.
Backends are imported lazily so that a machine without one of the libraries can still run the other.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from typing import Any

from pensieve_server.engine import cpu, devices
from pensieve_server.engine.base import Backend, ModelLoadError
from pensieve_server.memory import auto_cache_bytes
from pensieve_server.models.formats.engines import MLX_CONVERTIBLE, engines_for
from pensieve_server.models.store import ModelEntry, ModelStore

ENGINES = ("auto", "mlx", "llamacpp", "upstream")
# Apple Silicon leaves llama.cpp out of the default install (MLX is its engine); this adds it.
LLAMACPP_INSTALL = "pip install \".[llamacpp]\" in Pensieve's folder (the llamacpp extra), or pip install llama-cpp-python"

# Engines registered in-process: name → build(entry, context_length). Tests register their scripted
# backend here; production code registers nothing, so no test double is ever imported by the server.
BuildBackend = Callable[[ModelEntry, int], Backend]
_REGISTERED: dict[str, BuildBackend] = {}


def register_engine(name: str, build: BuildBackend) -> None:
    """Make ``name`` an engine that :func:`load_backend` builds with ``build(entry, context_length)``."""
    _REGISTERED[name.lower()] = build


def _mlx_missing(why: str) -> ModelLoadError:
    hint = "pip install mlx-lm" if devices.is_apple_silicon() else "pip install 'mlx[cpu]' mlx-lm (slow on a CPU)"
    return ModelLoadError(f"{why}, but MLX does not import on this machine; {hint}")


def _not_convertible(entry: ModelEntry) -> ModelLoadError:
    arch = entry.architecture or "unknown"
    return ModelLoadError(f"{entry.name} is a GGUF of architecture {arch!r}, which MLX cannot run (the GGUF to MLX "
                          f"conversion handles {', '.join(sorted(MLX_CONVERTIBLE))}); use --engine llamacpp "
                          "(or auto), or pull the MLX version of the model")


def resolve_engine(requested: str, entry: ModelEntry | None) -> str:
    """The engine that will run ``entry`` for a configured ``requested`` engine ("auto", "mlx", "llamacpp").

    ``entry`` None asks about a llama-architecture GGUF (the engine a new model would get).
    Raises ModelLoadError, saying what to do, when no engine here can run the model.
    """
    requested = (requested or "auto").lower()
    if requested in _REGISTERED or requested == "upstream":
        return requested
    if requested not in ENGINES:
        raise ModelLoadError(f"unknown engine {requested!r}; choose one of {', '.join(ENGINES[:3])}")
    name = entry.name if entry is not None else "the model"
    runnable = engines_for(entry) if entry is not None else ("llamacpp", "mlx")
    if not runnable:
        assert entry is not None
        raise ModelLoadError(f"{name} has format {entry.format!r}, which no engine runs; re-install it")
    mlx = devices.mlx_gpu()
    if "llamacpp" not in runnable:  # an MLX folder
        if requested == "llamacpp":
            raise ModelLoadError(f"{name} is an MLX-format model and llama.cpp runs GGUF files only; "
                                 "use --engine mlx (or auto), or pull the GGUF version of the model")
        if mlx is None:
            raise _mlx_missing(f"{name} is an MLX-format model")
        return "mlx"
    if requested == "mlx":
        if "mlx" not in runnable:
            assert entry is not None
            raise _not_convertible(entry)
        if mlx is None:
            raise _mlx_missing("--engine mlx was asked for")
        return "mlx"
    if requested == "llamacpp":
        if not devices.llamacpp_available():
            raise ModelLoadError("--engine llamacpp was asked for, but llama-cpp-python is not installed; "
                                 + LLAMACPP_INSTALL)
        return "llamacpp"
    return _auto(runnable, mlx, name)


def _auto(runnable: tuple[str, ...], mlx: str | None, name: str) -> str:
    """``auto`` for a GGUF: the fastest engine that runs it here (see the module docstring)."""
    mlx_runs = "mlx" in runnable and mlx is not None
    llamacpp = devices.llamacpp_available()
    if mlx_runs and mlx == "metal" and devices.is_apple_silicon():
        return "mlx"
    if llamacpp and devices.llamacpp_on_gpu():
        return "llamacpp"
    if mlx_runs and mlx in ("metal", "cuda"):
        return "mlx"
    if llamacpp:
        return "llamacpp"
    if mlx_runs:
        return "mlx"  # slow on a CPU, but better than nothing
    if mlx is not None:
        raise ModelLoadError(f"{name} runs on llama.cpp only (MLX cannot convert its architecture), and "
                             "llama-cpp-python is not installed; " + LLAMACPP_INSTALL)
    raise ModelLoadError("no inference engine is installed; " + LLAMACPP_INSTALL + " (or mlx-lm)")


def load_backend(
    entry: ModelEntry,
    engine: str,
    store: ModelStore,
    context_length: int = 0,
    prefix_cache_bytes: int | None = None,
    parallel: int = 1,
    compute_threads: int = 0,
) -> Backend:
    """Load ``entry`` on ``engine`` (resolved first when it is "auto"), on the device the probes found.

    ``parallel`` > 1 decodes that many requests together: llama.cpp in one context with a KV stream
    per slot, MLX through mlx-lm's BatchGenerator; 0 picks it (:mod:`pensieve_server.engine.parallel`).
    """
    if engine == "auto":
        engine = resolve_engine(engine, entry)
    if engine in _REGISTERED:
        return _REGISTERED[engine](entry, context_length)
    if engine == "upstream":
        raise ModelLoadError("the upstream engine forwards to upstream_url and loads no local model; "
                             "the model pool loads upstream models itself")
    resolve_engine(engine, entry)  # the same clear error for a model the engine cannot run
    # Asking whether llama.cpp offloads also loads its libraries before numpy's (the other way round a CUDA
    # build crashed while loading); with every layer on the GPU a few CPU threads compute as fast as all.
    device = devices.llamacpp_device() if engine == "llamacpp" else devices.mlx_gpu()
    threads = cpu.compute_threads(compute_threads, all_layers_on_gpu=engine == "llamacpp" and device not in (None, "cpu"))
    if parallel <= 0:
        from pensieve_server.engine.parallel import auto_parallel

        parallel = auto_parallel(entry, engine, context_length)
    # Both single-sequence engines bound their saved prefix states the same way (0: auto-sized). Imported
    # only now: saved_states loads numpy, which must come after llama.cpp's libraries (above).
    from pensieve_server.engine.saved_states import DEFAULT_CACHE_BYTES

    limit = DEFAULT_CACHE_BYTES if prefix_cache_bytes is None else prefix_cache_bytes or auto_cache_bytes()
    try:
        if engine == "llamacpp":
            return _load_llamacpp(entry, context_length, parallel, threads, limit, device)
        from pensieve_server.engine.mlx_backend import MlxBackend
        from pensieve_server.engine.mlx_batch import MlxBatchBackend
    except ImportError as exc:
        raise ModelLoadError(f"the {engine} engine does not import ({exc}); re-install Pensieve's dependencies") from None
    if parallel > 1:
        return MlxBatchBackend.load_batched(entry, store, parallel, context_length, cache_bytes_limit=limit,
                                            device=device)
    return MlxBackend.load(entry, store, context_length, cache_bytes_limit=limit, device=device)


def _load_llamacpp(entry: ModelEntry, context_length: int, parallel: int, threads: int, limit: int,
                   device: str | None) -> Backend:
    if parallel > 1:
        from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend

        return LlamaCppBatchBackend.load_batched(entry, parallel, context_length, n_threads=threads, device=device)
    from pensieve_server.engine.llamacpp_backend import LlamaCppBackend

    return LlamaCppBackend.load(entry, context_length, n_threads=threads, cache_bytes_limit=limit, device=device)


class DeviceSummary(dict):
    """describe_device()'s answer: a dict for /health and --json, its summary when printed."""

    def __str__(self) -> str:
        return str(self.get("summary", ""))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_device() -> dict[str, Any]:
    """The platform, which engines import and on which device each computes (for /health and doctor)."""
    system, machine = devices.host()
    mlx, llamacpp = devices.mlx_gpu(), devices.llamacpp_device()
    try:
        default = resolve_engine("auto", None)
    except ModelLoadError:
        default = None
    device = {"mlx": mlx, "llamacpp": llamacpp}.get(default or "") or "cpu"
    words = {"metal": "Metal GPU", "cuda": "CUDA GPU", "cpu": f"CPU ({machine}, {os.cpu_count() or '?'} cores)"}
    return DeviceSummary(
        platform=system,
        machine=machine,
        cpu_count=os.cpu_count(),
        engines={
            "mlx": {"available": mlx is not None, "version": _version("mlx"), "device": mlx},
            "llamacpp": {"available": llamacpp is not None, "version": _version("llama_cpp_python"),
                         "device": llamacpp},
        },
        default_engine=default,
        device=device,
        gpu=gpu.to_json() if (gpu := devices.detect_gpu()) is not None else None,
        summary=words.get(device, f"{device.upper()} GPU"),
    )
