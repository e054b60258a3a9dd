"""``pensieve start|stop|restart|status|logs``: the server in the background, managed through a pid file.

The process work lives in :mod:`pensieve_cli.daemon`; this module parses flags and talks to the person.
``start_background`` is re-exported for ``pensieve setup --start``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from pensieve_cli import ui
from pensieve_cli.commands.serve import SERVE_FLAGS, add_server_flags
from pensieve_cli.context import settings_from_args
from pensieve_cli.daemon import (
    STOP_TIMEOUT_S,
    health,
    pid_file_state,
    start_background,
    stop_background,
    tail_lines,
)
from pensieve_cli.errors import CliError, ExitStatus
from pensieve_server.settings import Settings

__all__ = ["register", "start_background"]

METRICS_TIMEOUT_S = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    start = subparsers.add_parser(
        "start", help="run the server in the background",
        description="Start the server detached from this terminal and wait until it answers.\n"
        "Output goes to the server log (`pensieve logs`).",
        epilog="examples:\n  pensieve start\n  pensieve start --port 8080 --model qwen2.5-coder-7b",
        formatter_class=fmt)
    add_server_flags(start)
    start.set_defaults(func=run_start)

    stop = subparsers.add_parser("stop", help="stop the background server",
                                 description="Stop the background server: SIGTERM, then SIGKILL after --timeout.",
                                 epilog="examples:\n  pensieve stop\n  pensieve stop --timeout 30",
                                 formatter_class=fmt)
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S,
                      help=f"seconds to wait for a graceful stop before killing it (default {STOP_TIMEOUT_S:.0f})")
    stop.set_defaults(func=run_stop)

    restart = subparsers.add_parser(
        "restart", help="restart the background server",
        description="Stop the background server (if running) and start it again with the current\n"
        "config and these flags.",
        epilog="examples:\n  pensieve restart\n  pensieve restart --model qwen2.5-coder-7b --parallel 2",
        formatter_class=fmt)
    add_server_flags(restart)
    restart.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, help="seconds to wait for the stop")
    restart.set_defaults(func=run_restart)

    status = subparsers.add_parser(
        "status", help="is the server running? pid, uptime, model, memory, requests",
        description="Show whether the server runs and how it is doing.",
        epilog="examples:\n  pensieve status\n  pensieve status --json | jq .running\n\n"
        "exit status: 0 running, 3 not running", formatter_class=fmt)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=run_status)

    logs = subparsers.add_parser("logs", help="show the server log",
                                 description="Print the end of the server log; -f keeps printing new lines.",
                                 epilog="examples:\n  pensieve logs\n  pensieve logs -f\n  pensieve logs -n 200",
                                 formatter_class=fmt)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.add_argument("-n", "--lines", type=int, default=50, metavar="N", help="lines to print (default 50)")
    logs.set_defaults(func=run_logs)


# -- start / stop / restart --------------------------------------------------------------------------

def run_start(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, SERVE_FLAGS)
    stale = pid_file_state(settings.paths).stale
    if stale and not args.quiet:
        ui.warning(stale)
    if not args.quiet:
        print(f"Starting Pensieve at {settings.base_url} (model {settings.default_model})...", flush=True)
    info = start_background(settings)
    if not args.quiet:
        engine = f" on {info['engine']} ({info['device']})" if info.get("engine") else ""
        ui.success(f"Pensieve is running at {info['url']} with {info['model']}{engine}, pid {info['pid']}")
        print(f"Logs: pensieve logs -f   ({info['log']})")
    return ExitStatus.OK


def run_stop(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    state = pid_file_state(settings.paths)
    if state.stale and not args.quiet:
        ui.warning(state.stale)
    stopped = stop_background(settings.paths, args.timeout)
    if stopped is None:
        foreground = health(settings.base_url)
        if foreground is not None:
            raise CliError(f"the Pensieve server at {settings.base_url} (pid {foreground.get('pid')}) was not "
                           "started by `pensieve start`; stop it with Ctrl-C in its terminal", ExitStatus.NOT_FOUND)
        if not args.quiet:
            ui.warning("Pensieve is not running")
        return ExitStatus.OK
    record, how = stopped
    if not args.quiet:
        if how == "killed":
            ui.warning(f"Pensieve (pid {record.pid}) did not stop within {args.timeout:g} s and was killed")
        else:
            ui.success(f"Pensieve stopped (pid {record.pid})")
    return ExitStatus.OK


def run_restart(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, SERVE_FLAGS)
    stopped = stop_background(settings.paths, args.timeout)
    if stopped is not None and not args.quiet:
        ui.success(f"stopped pid {stopped[0].pid}")
    return run_start(args)


# -- status ------------------------------------------------------------------------------------------

def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → sums by metric name (labels folded together)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def request_count(text: str) -> int:
    """API requests served (``/v1/…`` routes; probes of ``/health`` and ``/metrics`` are not counted)."""
    total = 0
    for line in text.splitlines():
        if line.startswith("pensieve_requests_total{") and 'route="/v1/' in line:
            try:
                total += int(float(line.rsplit(" ", 1)[1]))
            except ValueError:
                continue
    return total


def fetch_metrics(base_url: str, token: str) -> str | None:
    import httpx

    try:
        response = httpx.get(f"{base_url}/metrics", headers={"x-api-key": token}, timeout=METRICS_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def server_status(settings: Settings) -> dict[str, Any]:
    """Everything ``status`` shows, as JSON-ready data (also used by doctor)."""
    from pensieve_server.memory import resident_bytes

    state = pid_file_state(settings.paths)
    record = state.record
    url = record.base_url(settings) if record else settings.base_url
    found = health(url)
    status: dict[str, Any] = {"running": found is not None, "managed": record is not None, "url": url,
                              "pid": record.pid if record else (found or {}).get("pid")}
    if state.stale:
        status["note"] = state.stale
    if record is not None:
        status.update(started_at=record.started_at, version=record.version, log=record.log)
    if found is None:
        return status
    status.update(version=found.get("version"), uptime_s=found.get("uptime_s"), model=found.get("model"),
                  engine=found.get("engine"), device=found.get("device"), gpu=found.get("gpu"),
                  gpu_layers=found.get("gpu_layers"))
    pid = status["pid"]
    rss = resident_bytes(pid) if isinstance(pid, int) and pid != os.getpid() else 0
    metrics_text = fetch_metrics(url, settings.auth_token) if settings.auth_token else None
    if metrics_text is not None:
        metrics = parse_metrics(metrics_text)
        rss = rss or int(metrics.get("pensieve_resident_memory_bytes", 0))
        count = metrics.get("pensieve_decode_tokens_per_second_count", 0.0)
        last = metrics.get("pensieve_last_decode_tokens_per_second")
        status["requests"] = request_count(metrics_text)
        status["tokens_per_s"] = round(last if last is not None else
                                       (metrics.get("pensieve_decode_tokens_per_second_sum", 0.0) / count
                                        if count else 0.0), 1)
        status["prefix_cache"] = prefix_cache_summary(metrics)
        status["disk_cache"] = disk_cache_summary(metrics)
    status["memory_rss_bytes"] = rss
    return status


def prefix_cache_summary(metrics: dict[str, float]) -> dict[str, float]:
    """Bytes held, and how often a request reused a cached prefix (hits / generations)."""
    hits = metrics.get("pensieve_prefix_cache_hits_total", 0.0)
    misses = metrics.get("pensieve_prefix_cache_misses_total", 0.0)
    read = metrics.get("pensieve_prefix_cache_read_tokens_total", 0.0)
    prompt = metrics.get("pensieve_input_tokens_total", 0.0)
    return {
        "bytes": int(metrics.get("pensieve_prefix_cache_bytes", 0)),
        "hit_rate": round(hits / (hits + misses), 3) if hits + misses else 0.0,
        "reused_token_share": round(read / prompt, 3) if prompt else 0.0,
    }


def disk_cache_summary(metrics: dict[str, float]) -> dict[str, float]:
    """Prefix states on disk: bytes, files and limit, and how often a cold prompt was restored from them."""
    hits = metrics.get("pensieve_disk_cache_hits", 0.0)
    misses = metrics.get("pensieve_disk_cache_misses", 0.0)
    return {
        "bytes": int(metrics.get("pensieve_disk_cache_bytes", 0)),
        "files": int(metrics.get("pensieve_disk_cache_files", 0)),
        "limit_bytes": int(metrics.get("pensieve_disk_cache_limit_bytes", 0)),
        "hits": int(hits),
        "hit_rate": round(hits / (hits + misses), 3) if hits + misses else 0.0,
    }


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def run_status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    status = server_status(settings)
    code = ExitStatus.OK if status["running"] else ExitStatus.NOT_FOUND
    if args.json:
        ui.print_json(status)
        return code
    if not status["running"]:
        if status["managed"]:
            ui.warning(f"Pensieve (pid {status['pid']}) runs but does not answer at {status['url']} yet "
                       f"(loading the model?); see `pensieve logs`")
            return code
        if status.get("note") and not args.quiet:
            ui.warning(status["note"])
        ui.failure(f"Pensieve is not running at {status['url']}; start it with `pensieve start`")
        return code
    how = "" if status["managed"] else " (started with `pensieve serve`, not managed by start/stop)"
    ui.success(f"Pensieve {status.get('version')} is running at {status['url']}{how}")
    if args.quiet:
        return code
    rows = [("pid", status.get("pid")), ("uptime", human_duration(status.get("uptime_s") or 0)),
            ("model", f"{status.get('model')} ({status.get('engine')}, {status.get('device')})")]
    if status.get("gpu") or status.get("gpu_layers"):
        rows.append(("gpu", gpu_line(status.get("gpu"), status.get("gpu_layers"))))
    if status.get("memory_rss_bytes"):
        rows.append(("memory", f"{status['memory_rss_bytes'] / 1024**2:.0f} MB resident"))
    if "requests" in status:
        rows.append(("requests", status["requests"]))
        rows.append(("tokens/s", f"{status['tokens_per_s']:g}" if status["tokens_per_s"] else "-"))
    cache = status.get("prefix_cache")
    if cache:
        rows.append(("cache", f"{cache['bytes'] / 1024**2:.0f} MB of prefix KV; {cache['hit_rate']:.0%} of requests "
                              f"reused a prefix ({cache['reused_token_share']:.0%} of prompt tokens)"))
    disk = status.get("disk_cache")
    if disk:
        rows.append(("disk", f"{disk['bytes'] / 1024**2:.0f} MB in {disk['files']} prefix states; "
                             f"{disk['hits']} restored ({disk['hit_rate']:.0%} of cold prompts)"))
    if status.get("log"):
        rows.append(("log", status["log"]))
    for label, value in rows:
        print(f"  {label:<9} {value}")
    return code


def gpu_line(gpu: dict[str, Any] | None, layers: dict[str, Any] | None) -> str:
    """"NVIDIA H200 (143 GB): 31/31 layers offloaded (n_gpu_layers -1)", or why nothing is."""
    name = gpu.get("name", "GPU") if gpu else "no GPU found"
    if gpu and gpu.get("memory_bytes"):
        name += f" ({gpu['memory_bytes'] / 1000**3:.0f} GB)"
    if not layers:
        return name
    total = f"/{layers['total']}" if layers.get("total") else ""
    return f"{name}: {layers.get('offloaded', 0)}{total} layers offloaded (n_gpu_layers {layers.get('requested')})"


# -- logs --------------------------------------------------------------------------------------------

def run_logs(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    path = settings.paths.server_log
    if args.lines < 0:
        raise CliError("-n must be 0 or more", ExitStatus.USAGE)
    if not path.exists():
        raise CliError(f"no server log yet at {path}; start the server with `pensieve start`", ExitStatus.NOT_FOUND)
    lines = tail_lines(path, args.lines)
    previous = path.with_name(f"{path.name}.1")  # just rotated: the rest of the last N lines is there
    if len(lines) < args.lines and previous.is_file():
        with contextlib.suppress(OSError):
            lines = tail_lines(previous, args.lines - len(lines)) + lines
    for line in lines:
        print(line)
    sys.stdout.flush()
    if args.follow:
        try:
            follow(path)
        except KeyboardInterrupt:
            return ExitStatus.OK
    return ExitStatus.OK


def follow(path: Path, interval: float = 0.3, until: float | None = None) -> None:
    """Print lines appended to ``path`` as they come; on rotation, finish the old file and every
    newer backup (several rotations can pass between two polls on a busy log) before the new one."""
    handle = open(path, "rb")  # noqa: SIM115 - reopened on rotation
    try:
        handle.seek(0, os.SEEK_END)
        inode = os.fstat(handle.fileno()).st_ino
        while until is None or time.monotonic() < until:
            if _print_new(handle.read()):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino != inode or st.st_size < handle.tell()):
                if st.st_ino != inode:
                    _print_new(handle.read())  # written to the old file just before it was rotated
                    for newer in _backups_newer_than(path, inode):
                        with newer:
                            _print_new(newer.read())
                handle.close()
                handle = open(path, "rb")  # noqa: SIM115
                inode = os.fstat(handle.fileno()).st_ino
                continue
            time.sleep(interval)
    finally:
        handle.close()


def _print_new(chunk: bytes) -> bool:
    if chunk:
        sys.stdout.write(chunk.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return bool(chunk)


def _backups_newer_than(path: Path, inode: int) -> list[BinaryIO]:
    """Open the backups (``path.1`` newest … ``path.N``) rotated after the file with ``inode``,
    oldest first; all of them when that file has already been rotated away."""
    opened: list[BinaryIO] = []
    for n in itertools.count(1):
        try:
            handle = open(path.with_name(f"{path.name}.{n}"), "rb")  # noqa: SIM115 - closed by the caller
        except OSError:
            break
        if os.fstat(handle.fileno()).st_ino == inode:
            handle.close()
            break
        opened.append(handle)
    return opened[::-1]
