"""How many CPU threads llama.cpp should compute with.

llama-cpp-python's default is half the logical CPUs (it assumes hyper-threading): on a 2-core
machine without it, that is one thread, and decode ran at 65 tok/s instead of 93 (SmolLM2-135M,
measured here). llama.cpp's own server uses one thread per physical core; so do we.
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


def compute_threads(configured: int) -> int:
    """The ``compute_threads`` setting, with 0 meaning the default above."""
    return configured if configured > 0 else default_compute_threads()
