"""Doctor's checks of the engine that runs the model: it imports, MLX's device, and the GPU it computes on."""

from __future__ import annotations

import importlib
import importlib.metadata

from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.report import FAIL, OK, SKIP, WARN, Check


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


MLX_DEVICES = {"metal": "Metal GPU", "cuda": "CUDA GPU", "cpu": "CPU"}


def check_mlx(ctx: Context) -> Check:
    from pensieve_server.engine.devices import is_apple_silicon
    from pensieve_server.engine.devices import mlx_gpu as mlx_device

    device = mlx_device()
    if device is None:
        if is_apple_silicon():
            return Check("mlx", FAIL, "MLX does not import", "pip install --force-reinstall mlx mlx-lm")
        return Check("mlx", WARN, "MLX does not import (only needed for --engine mlx; llama.cpp runs GGUF models)",
                     "pip install 'mlx[cpu]' mlx-lm, if you want MLX here")
    version = f"MLX {_version('mlx')}"
    if device == "cpu":
        return Check("mlx", WARN, f"{version} runs on the CPU here, which is much slower than llama.cpp",
                     "keep engine = auto (it picks llama.cpp here); MLX is fast on Apple Silicon GPUs",
                     data={"device": device})
    return Check("mlx", OK, f"{version} on the {MLX_DEVICES.get(device, device)}", data={"device": device})


ENGINE_DISTRIBUTIONS = {"llamacpp": "llama-cpp-python", "mlx": "mlx-lm"}
ENGINE_MODULES = {"llamacpp": "llama_cpp", "mlx": "mlx_lm"}


def check_engine(ctx: Context) -> Check:
    from pensieve_server.engine.factory import describe_device

    engine, problem = ctx.engine_choice
    if not engine:
        return Check("engine", FAIL, problem.split("; ", 1)[0], (problem.split("; ", 1) + [""])[1] or
                     "pensieve config set engine auto")
    how = "auto picks" if ctx.settings.engine == "auto" else "configured:"
    distribution = ENGINE_DISTRIBUTIONS.get(engine, engine)
    try:
        importlib.import_module(ENGINE_MODULES.get(engine, "pensieve_server.engine.scripted"))
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        return Check("engine", FAIL, f"{how} {engine}, but it does not import ({exc})",
                     f"pip install --force-reinstall {distribution}")
    summary = describe_device()
    device = (summary.get("engines", {}).get(engine) or {}).get("device")
    words = str(summary) if device == summary.get("device") else MLX_DEVICES.get(device or "", device or "?")
    return Check("engine", OK, f"{how} {engine} ({distribution} {_version(distribution)}) on the {words}",
                 data={"engine": engine, "device": device})


def check_gpu(ctx: Context) -> Check:
    """The GPU, and whether the engine in use computes on it; the exact rebuild command when not."""
    from pensieve_server.engine import devices

    engine, _ = ctx.engine_choice
    if not engine:
        return Check("gpu", SKIP, "skipped: no engine can run the model (see the engine line)")
    advice = devices.advise(engine)
    data = {"gpu": advice.gpu.to_json() if advice.gpu else None, "engine": engine, "on_gpu": advice.on_gpu}
    if advice.on_gpu is False:
        return Check("gpu", WARN, advice.detail, advice.fix, data=data)
    return Check("gpu", OK, advice.detail, data=data)
