"""Which GPU this machine has, and whether the installed engines can compute on it.

A leaf module (it imports nothing of Pensieve's) so that the engine factory, ``doctor`` and the
backends can all ask it; the factory passes the device it found to the backend it loads. Every probe is a small function that returns plain data and never raises: tests replace
them one by one to pretend to be a machine with an NVIDIA, AMD or Apple GPU.

The PyPI build of llama-cpp-python is CPU-only; a GPU then sits idle without a word unless someone
looks. :func:`llamacpp_fix` and :func:`mlx_fix` give the exact command that installs a GPU build.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

PROBE_TIMEOUT_S = 5.0
VENDOR_WORDS = {"nvidia": "NVIDIA", "amd": "AMD", "apple": "Apple"}


@dataclass(frozen=True)
class Gpu:
    """A GPU found on this machine; ``via`` says how it was found (shown by doctor)."""

    vendor: str  # nvidia | amd | apple
    name: str
    memory_bytes: int | None = None
    via: str = ""

    def describe(self) -> str:
        memory = f", {self.memory_bytes / 1000**3:.0f} GB" if self.memory_bytes else ""
        return f"{self.name}{memory}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def host() -> tuple[str, str]:
    """``(sys.platform, machine)``; a function so tests can pretend to be another machine."""
    return sys.platform, platform.machine()


def _run(command: list[str]) -> str | None:
    """stdout of ``command``, or None when it is missing, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_gpu() -> Gpu | None:
    """The first NVIDIA GPU: nvidia-smi's name and memory, else the driver's presence (libcuda, /proc)."""
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
    if out and out.strip():
        name, _, mib = out.strip().splitlines()[0].partition(",")
        memory = int(float(mib)) * 1024**2 if mib.strip().replace(".", "", 1).isdigit() else None
        return Gpu("nvidia", name.strip() or "NVIDIA GPU", memory, "nvidia-smi")
    if Path("/proc/driver/nvidia/version").exists() or ctypes.util.find_library("cuda"):
        return Gpu("nvidia", "NVIDIA GPU", None, "the NVIDIA driver (libcuda)")
    return None


def amd_gpu() -> Gpu | None:
    """An AMD GPU through ROCm: rocm-smi's product name, else the ROCm kernel driver (/dev/kfd)."""
    out = _run(["rocm-smi", "--showproductname", "--csv"])
    if out:
        for line in out.strip().splitlines()[1:]:
            fields = [f.strip() for f in line.split(",")]
            name = next((f for f in fields[1:] if f and not f.startswith("0x")), "")
            if fields and fields[0].startswith("card"):
                return Gpu("amd", name or "AMD GPU", None, "rocm-smi")
    if os.path.exists("/dev/kfd"):
        return Gpu("amd", "AMD GPU", None, "the ROCm driver (/dev/kfd)")
    return None


def apple_gpu() -> Gpu | None:
    """The Apple Silicon GPU (Metal): every arm64 Mac has one."""
    system, machine = host()
    if system != "darwin" or machine != "arm64":
        return None
    chip = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
    return Gpu("apple", f"{chip.strip()} GPU" if chip and chip.strip() else "Apple Silicon GPU", None, "Metal")


@cache
def detect_gpu() -> Gpu | None:
    """The GPU an engine could use here, or None (NVIDIA first, then AMD, then Apple)."""
    for probe in (nvidia_gpu, amd_gpu, apple_gpu):
        found = probe()
        if found is not None:
            return found
    return None


@cache
def llamacpp_gpu_offload() -> bool | None:
    """Whether the installed llama-cpp-python was built with a GPU backend; None: it does not import."""
    try:
        import llama_cpp
    except Exception:  # noqa: BLE001 - a broken build raises more than ImportError
        return None
    try:
        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # noqa: BLE001
        return False


@cache
def mlx_gpu() -> str | None:
    """Where MLX computes: "metal", "cuda" or "cpu"; None when MLX does not import."""
    try:
        import mlx.core as mx
    except Exception:  # noqa: BLE001 - a broken install raises more than ImportError
        return None
    for backend in ("metal", "cuda"):
        try:
            module = getattr(mx, backend, None)
            if module is not None and module.is_available():
                return backend
        except Exception:  # noqa: BLE001
            continue
    return "cpu"


def is_apple_silicon() -> bool:
    system, machine = host()
    return system == "darwin" and machine == "arm64"


def llamacpp_available() -> bool:
    """Whether llama-cpp-python is installed (Apple Silicon leaves it out of the default install)."""
    return importlib.util.find_spec("llama_cpp") is not None


def llamacpp_gpu_backend() -> str:
    """Which GPU backend llama.cpp was built with, from its system info ("cuda", "metal", "rocm", ...)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    for marker, device in (("CUDA", "cuda"), ("Metal", "metal"), ("MTL", "metal"), ("Vulkan", "vulkan"),
                           ("HIP", "rocm"), ("ROCm", "rocm"), ("SYCL", "sycl")):
        if marker in info:
            return device
    return "metal" if sys.platform == "darwin" else "gpu"


def llamacpp_device() -> str | None:
    """Where llama.cpp computes: "cpu" or its GPU backend; None when it does not import.

    A GPU build on a machine without that GPU computes on the CPU.
    """
    offload = llamacpp_gpu_offload()
    if offload is None:
        return None
    if not offload or detect_gpu() is None:
        return "cpu"
    return llamacpp_gpu_backend()


def llamacpp_on_gpu() -> bool:
    """llama.cpp imports, was built with GPU offload, and this machine has a GPU for it."""
    return llamacpp_device() not in (None, "cpu")


def _with_cmake_args(flags: str, package: str = "llama-cpp-python") -> str:
    """The reinstall command with ``CMAKE_ARGS`` set the way this platform's shell sets it."""
    install = f"pip install --force-reinstall --no-cache-dir {package}"
    if host()[0] == "win32":
        return f'$env:CMAKE_ARGS="{flags}"; {install}'  # PowerShell
    return f'CMAKE_ARGS="{flags}" {install}'


LLAMACPP_GPU_FLAGS = {"nvidia": "-DGGML_CUDA=on", "amd": "-DGGML_HIP=on", "apple": "-DGGML_METAL=on"}


def llamacpp_fix(gpu: Gpu) -> str:
    """The command that rebuilds llama-cpp-python for ``gpu`` (it compiles llama.cpp again)."""
    command = _with_cmake_args(LLAMACPP_GPU_FLAGS[gpu.vendor])
    if gpu.vendor == "nvidia" and shutil.which("nvcc") is None:
        command += " (needs the CUDA toolkit's nvcc on PATH)"
    if gpu.vendor == "amd" and shutil.which("hipcc") is None:
        command += " (needs ROCm's hipcc on PATH)"
    return command


def mlx_fix(gpu: Gpu) -> str | None:
    """The command that gives MLX ``gpu``; None where MLX has no backend for it (AMD)."""
    if gpu.vendor == "apple":
        return "pip install --force-reinstall mlx mlx-lm"
    if gpu.vendor == "nvidia" and host()[0] == "linux":
        return 'pip install "mlx[cuda]" mlx-lm'
    return None


def clear_caches() -> None:
    """Forget every cached probe (tests, and after an engine was reinstalled in-process)."""
    for probe in (detect_gpu, llamacpp_gpu_offload, mlx_gpu):
        clear = getattr(probe, "cache_clear", None)  # a test may have put a plain function in its place
        if clear is not None:
            clear()


@dataclass(frozen=True)
class GpuAdvice:
    """Whether an engine computes on this machine's GPU; ``fix`` is the command that makes it (doctor)."""

    gpu: Gpu | None
    on_gpu: bool | None  # None: no GPU here, or no local engine to ask about
    detail: str
    fix: str = ""


LLAMACPP_BACKENDS = {"nvidia": "CUDA", "amd": "HIP/ROCm", "apple": "Metal"}


def advise(engine: str) -> GpuAdvice:
    """What doctor says about ``engine`` ("llamacpp" or "mlx") and this machine's GPU."""
    gpu = detect_gpu()
    if engine not in ("llamacpp", "mlx"):
        return GpuAdvice(gpu, None, f"{gpu.describe() if gpu else 'no GPU found'}; the {engine} engine computes "
                         "no model here")
    if gpu is None:
        return GpuAdvice(None, None, f"no NVIDIA, AMD or Apple GPU found: {engine} computes on the CPU")
    found = f"{gpu.describe()} (found through {gpu.via})"
    if engine == "llamacpp":
        offload = llamacpp_gpu_offload()
        if offload is None:
            return GpuAdvice(gpu, False, f"{found}, but llama-cpp-python does not import",
                             llamacpp_fix(gpu))
        if offload:
            return GpuAdvice(gpu, True, f"{found}: llama.cpp offloads every layer to it")
        also = " (or engine = mlx: `pensieve config set engine mlx`)" if gpu.vendor == "apple" else ""
        return GpuAdvice(gpu, False, f"{found}, but llama-cpp-python was built for the CPU only, so the model "
                         f"runs on the CPU", llamacpp_fix(gpu) + also)
    where = mlx_gpu()
    if where in ("metal", "cuda"):
        return GpuAdvice(gpu, True, f"{found}: MLX computes on it ({where})")
    if gpu.vendor == "apple":
        return GpuAdvice(gpu, False, f"{found}, but MLX {'does not import' if where is None else 'has no Metal'}",
                         mlx_fix(gpu) or "")
    # NVIDIA/AMD: llama.cpp on the GPU is the fast engine for GGUF models; MLX's CUDA build is the other way.
    alternative = f'; or for MLX: {mlx_fix(gpu)}' if mlx_fix(gpu) else ""
    return GpuAdvice(gpu, False, f"{found}, but MLX runs on the CPU here",
                     f"{llamacpp_fix(gpu)}, then `pensieve config set engine auto`{alternative}")
