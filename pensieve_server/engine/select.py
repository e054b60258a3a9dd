"""Which engine runs a model here, and loading it.

``auto`` picks the fastest engine that can actually run here: MLX on an Apple Silicon GPU, then
llama.cpp when its build offloads to a GPU this machine has, then MLX on a CUDA GPU, then llama.cpp
on the CPU; MLX on a CPU is far slower than llama.cpp, so it comes last. The device probes live in
:mod:`pensieve_server.engine.devices`. Backends are imported lazily so that a machine without one of
the libraries can still run the other.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import Any

from pensieve_server.engine import cpu, devices
from pensieve_server.engine.base import Backend, ModelLoadError
from pensieve_server.memory import auto_cache_bytes
from pensieve_server.models.store import ModelEntry, ModelStore

ENGINES = ("auto", "mlx", "llamacpp", "scripted", "upstream")
FORMATS = {"gguf": ("llamacpp", "mlx"), "mlx": ("mlx",)}


host = devices.host
# Apple Silicon leaves llama.cpp out of the default install (MLX is its engine); this adds it.
LLAMACPP_INSTALL = "pip install \".[llamacpp]\" in Pensieve's folder (the llamacpp extra), or pip install llama-cpp-python"


def is_apple_silicon() -> bool:
    system, machine = host()
    return system == "darwin" and machine == "arm64"


def mlx_device() -> str | None:
    """Where MLX computes: "metal", "cuda" or "cpu"; None when MLX does not import."""
    return devices.mlx_gpu()


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def llamacpp_device() -> str | None:
    """Where llama.cpp computes: "cpu" or its GPU backend; None when it does not import.

    A GPU build on a machine without that GPU computes on the CPU.
    """
    offload = devices.llamacpp_gpu_offload()
    if offload is None:
        return None
    if not offload or devices.detect_gpu() is None:
        return "cpu"
    from pensieve_server.engine.llamacpp_backend import _gpu_device

    return _gpu_device()


def llamacpp_on_gpu() -> bool:
    """llama.cpp imports, was built with GPU offload, and this machine has a GPU for it."""
    return llamacpp_device() not in (None, "cpu")


def _mlx_missing(why: str) -> ModelLoadError:
    hint = "pip install mlx-lm" if is_apple_silicon() else "pip install 'mlx[cpu]' mlx-lm (slow on a CPU)"
    return ModelLoadError(f"{why}, but MLX does not import on this machine; {hint}")


def resolve_engine(requested: str, entry: ModelEntry | None) -> str:
    """The engine that will run ``entry`` for a configured ``requested`` engine ("auto", "mlx", "llamacpp").

    Raises ModelLoadError, saying what to do, when no engine here can run the model in that format.
    """
    requested = (requested or "auto").lower()
    if requested not in ENGINES:
        raise ModelLoadError(f"unknown engine {requested!r}; choose one of {', '.join(ENGINES[:3])}")
    if requested in ("scripted", "upstream"):
        return requested
    fmt = entry.format if entry is not None else "gguf"
    name = entry.name if entry is not None else "the model"
    if fmt not in FORMATS:
        raise ModelLoadError(f"{name} has format {fmt!r}, which no engine runs; re-install it")
    if fmt == "mlx":
        if requested == "llamacpp":
            raise ModelLoadError(f"{name} is an MLX-format model and llama.cpp runs GGUF files only; "
                                 "use --engine mlx (or auto), or pull the GGUF version of the model")
        if mlx_device() is None:
            raise _mlx_missing(f"{name} is an MLX-format model")
        return "mlx"
    if requested == "mlx":
        if mlx_device() is None:
            raise _mlx_missing("--engine mlx was asked for")
        return "mlx"
    if requested == "llamacpp":
        if not llamacpp_available():
            raise ModelLoadError("--engine llamacpp was asked for, but llama-cpp-python is not installed; "
                                 + LLAMACPP_INSTALL)
        return "llamacpp"
    device = mlx_device()
    if device == "metal" and is_apple_silicon():
        return "mlx"
    if llamacpp_available() and llamacpp_on_gpu():
        return "llamacpp"
    if device in ("metal", "cuda"):
        return "mlx"
    if llamacpp_available():
        return "llamacpp"
    if device is not None:
        return "mlx"  # slow on a CPU, but better than nothing
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
    """Load ``entry`` on ``engine`` (resolved first when it is "auto").

    ``parallel`` > 1 decodes that many requests together: llama.cpp in one context with a KV stream
    per slot, MLX through mlx-lm's BatchGenerator; 0 picks it (:mod:`pensieve_server.engine.parallel`).
    """
    if engine == "auto":
        engine = resolve_engine(engine, entry)
    if engine == "scripted":
        from pensieve_server.engine.scripted import ScriptedBackend

        return ScriptedBackend(context_length or 200_000, name=entry.name)
    if engine == "upstream":
        raise ModelLoadError("the upstream engine forwards to upstream_url and loads no local model; "
                             "the model pool loads upstream models itself")
    resolve_engine(engine, entry)  # the same clear error for a format the engine cannot run
    # Asking whether llama.cpp offloads also loads its libraries before numpy's (the other way round a CUDA
    # build crashed while loading); with every layer on the GPU a few CPU threads compute as fast as all.
    on_gpu = engine == "llamacpp" and llamacpp_on_gpu()
    threads = cpu.compute_threads(compute_threads, all_layers_on_gpu=on_gpu)
    if parallel <= 0:
        from pensieve_server.engine.parallel import auto_parallel

        parallel = auto_parallel(entry, engine, context_length)
    # Both single-sequence engines bound their saved prefix states the same way (0: auto-sized).
    from pensieve_server.engine.llamacpp_backend import DEFAULT_CACHE_BYTES

    limit = DEFAULT_CACHE_BYTES if prefix_cache_bytes is None else prefix_cache_bytes or auto_cache_bytes()
    try:
        if engine == "llamacpp" and parallel > 1:
            from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend

            return LlamaCppBatchBackend.load_batched(entry, parallel, context_length, n_threads=threads)
        if engine == "llamacpp":
            from pensieve_server.engine.llamacpp_backend import LlamaCppBackend

            return LlamaCppBackend.load(entry, context_length, n_threads=threads, cache_bytes_limit=limit)
        from pensieve_server.engine.mlx_backend import MlxBackend
        from pensieve_server.engine.mlx_batch import MlxBatchBackend
    except ImportError as exc:
        raise ModelLoadError(f"the {engine} engine does not import ({exc}); re-install Pensieve's dependencies") from None
    if parallel > 1:
        return MlxBatchBackend.load_batched(entry, store, parallel, context_length, cache_bytes_limit=limit)
    return MlxBackend.load(entry, store, context_length, cache_bytes_limit=limit)


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
    system, machine = host()
    mlx, llamacpp = mlx_device(), llamacpp_device()
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
