"""Doctor's checks of this machine: Python, memory and disk for the model, prefix states on disk."""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.report import FAIL, OK, WARN, Check
from pensieve_server.units import format_size

MIN_PYTHON = (3, 10)
GIB = 1024**3


def check_python(ctx: Context) -> Check:
    version = platform.python_version()
    system = f"macOS {platform.mac_ver()[0]}" if sys.platform == "darwin" else f"{platform.system()} {platform.release()}"
    detail = f"Python {version} on {system} ({platform.machine()})"
    if sys.version_info < MIN_PYTHON:
        return Check("python", FAIL, detail, f"Pensieve needs Python {'.'.join(map(str, MIN_PYTHON))} or newer")
    return Check("python", OK, detail)


def available_ram_bytes() -> int:
    """Memory available for a new process (Linux: MemAvailable), or 0 when the OS does not say cheaply."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def ram_needed(model_bytes: int) -> int:
    """Weights plus room for the KV cache and the runtime: a deliberately rough estimate."""
    return int(model_bytes * 1.2) + GIB // 2


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_resources(ctx: Context) -> Check:
    from pensieve_server.models import catalog

    name = ctx.settings.default_model
    entry, known = ctx.entry, catalog.get(name)
    size = entry.size_bytes if entry else (known.size_bytes if known else 0)
    free_disk = shutil.disk_usage(_existing(ctx.settings.paths.models_dir)).free
    total, available = catalog.total_ram_bytes(), available_ram_bytes()
    memory = f"{format_size(available, precise=False)} of {format_size(total, precise=False)} memory free" if available else \
        f"{format_size(total, precise=False)} memory"
    detail = f"{format_size(free_disk, precise=False)} disk free, {memory}; {name} needs about {format_size(ram_needed(size), precise=False)}"
    data = {"disk_free_bytes": free_disk, "ram_total_bytes": total, "ram_available_bytes": available}
    if entry is None and size and free_disk < size * 1.1:
        return Check("resources", FAIL, f"{detail}, and {format_size(size, precise=False)} of disk to download",
                     "free some disk space first", data)
    if free_disk < GIB:
        return Check("resources", WARN, detail, "free some disk space: logs and model conversions need room", data)
    if known is not None and total and not catalog.fits(known, total):
        return Check("resources", WARN, f"{detail}; {name} is meant for {known.min_ram_gb} GB machines",
                     "expect swapping; `pensieve setup` recommends a model for this machine", data)
    if available and not ctx.served() and available < ram_needed(size):
        return Check("resources", FAIL, detail, "close other programs or choose a smaller model (`pensieve setup`)",
                     data)
    return Check("resources", OK, detail, data=data)


def check_disk_cache(ctx: Context) -> Check:
    """The prefix states kept on disk across restarts: size, limit, and (server running) how often they served."""
    from pensieve_cli.commands.daemon import disk_cache_summary, fetch_metrics, parse_metrics
    from pensieve_server.engine.disk_states import folder_usage, resolve_disk_bytes

    folder = ctx.settings.paths.prefix_states_dir
    limit = resolve_disk_bytes(ctx.settings.disk_cache_bytes, folder)
    used, files = folder_usage(folder)
    data: dict[str, Any] = {"folder": str(folder), "bytes": used, "files": files, "limit_bytes": limit}
    if limit <= 0:
        return Check("disk cache", OK, f"off (disk_cache_bytes = 0); {files} prefix states in {folder}", data=data)
    detail = (f"{format_size(used, precise=False)} of {format_size(limit, precise=False)} in {files} "
              f"prefix states ({folder})")
    metrics_text = fetch_metrics(ctx.settings.base_url, ctx.settings.auth_token) \
        if ctx.health is not None and ctx.settings.auth_token else None
    if metrics_text is not None:
        summary = disk_cache_summary(parse_metrics(metrics_text))
        data.update(hits=summary["hits"], hit_rate=summary["hit_rate"])
        detail += f"; {summary['hits']} restored since start ({summary['hit_rate']:.0%} of cold prompts)"
    return Check("disk cache", OK, detail, data=data)
