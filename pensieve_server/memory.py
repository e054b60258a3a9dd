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


def peak_resident_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
