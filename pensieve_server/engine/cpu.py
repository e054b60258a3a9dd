"""How many CPU threads llama.cpp should compute with.

llama-cpp-python's default is half the logical CPUs (it assumes hyper-threading): on a 2-core
machine without it, that is one thread, and decode ran at 65 tok/s instead of 93 (SmolLM2-135M,
measured here). llama.cpp's own server uses one thread per physical core; so do we.

Where every layer is on a GPU the CPU threads only launch kernels and wait: on an H200 one thread
stepped the batched engine as fast as sixteen, and sixteen spinning threads took the cores that the
HTTP and client threads needed (4 streams through the server: 0.88x one stream). Then a few do.
"""

from __future__ import annotations

import os
from pathlib import Path


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where the file does not say (macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    cores: set[tuple[str, str]] = set()
    package = core = None
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():
            if package is not None and core is not None:
                cores.add((package, core))
            package = core = None
    return len(cores) or None


def default_compute_threads() -> int:
    """One thread per physical core this process may use (all usable CPUs when cores are unknown)."""
    usable = usable_cpus()
    logical = os.cpu_count() or usable
    physical = physical_cores()
    if physical is None or physical >= logical:
        return usable
    return max(1, round(usable * physical / logical))  # hyper-threads add little to matrix work


# llama.cpp threads when every layer is offloaded to a GPU (benchmarks/results/2026-12-02-h200-streams.md).
GPU_COMPUTE_THREADS = 2


def compute_threads(configured: int, all_layers_on_gpu: bool = False) -> int:
    """The ``compute_threads`` setting; 0 means the default above, or a few threads when the GPU computes."""
    if configured > 0:
        return configured
    if all_layers_on_gpu:
        return min(GPU_COMPUTE_THREADS, usable_cpus())
    return default_compute_threads()
