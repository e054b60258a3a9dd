"""Resident memory of this process (for /metrics, status and benchmarks), without extra dependencies."""

from __future__ import annotations

import os
import resource
import sys


def resident_bytes(pid: int | None = None) -> int:
    """Current RSS in bytes (Linux: /proc; elsewhere the peak, which is what the OS offers cheaply)."""
    pid = pid or os.getpid()
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        if pid != os.getpid():
            return 0
        return peak_resident_bytes()


def available_bytes() -> int | None:
    """Memory the OS could give this process now (Linux MemAvailable; elsewhere free pages), or None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


AUTO_CACHE_CAP = 2 * 1024**3


def auto_cache_bytes() -> int:
    """The prefix cache's default size: an eighth of the memory available at start, at most 2 GiB
    (1 GiB when the OS does not say)."""
    available = available_bytes()
    return min(AUTO_CACHE_CAP, available // 8) if available else 1024**3


def peak_resident_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
