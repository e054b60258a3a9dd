"""The background server: pid file, spawn, wait for ``/health``, stop, log rotation. No argparse here.

``pensieve start`` runs ``python -m pensieve_cli.main serve --log-file server.log …`` in its own
session with output appended to ``server.log`` (the server rotates that file itself once it passes
``LOG_MAX_BYTES``, see :mod:`pensieve_cli.server_log`) and records it in ``Paths.pid_file`` (JSON).
Every reader checks that the recorded process still runs and is a Pensieve server, and removes a
stale file, so a crash or a reboot never leaves Pensieve believing it runs. Failures raise
:class:`CliError` with the reason read from the log (e.g. the port in use), so ``setup --start`` can
call :func:`start_background` too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pensieve_cli.errors import CliError, ExitStatus
from pensieve_server import __version__
from pensieve_server.bind_policy import loopback_for
from pensieve_server.settings import Paths, Settings

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 3
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ServerRecord:
    """What ``Paths.pid_file`` holds about the server ``pensieve start`` launched."""

    pid: int
    port: int
    host: str
    started_at: str  # ISO 8601, UTC
    version: str
    log: str

    def base_url(self, settings: Settings) -> str:
        return settings.replace(host=self.host, port=self.port).base_url

    def uptime_s(self) -> float:
        try:
            return max(0.0, time.time() - datetime.fromisoformat(self.started_at).timestamp())
        except ValueError:
            return 0.0


@dataclass(frozen=True)
class PidFileState:
    """The live server from the pid file, or why the file was removed (``stale``)."""

    record: ServerRecord | None
    stale: str = ""


# -- processes ---------------------------------------------------------------------------------------

def process_cmdline(pid: int) -> list[str] | None:
    """The process's argv; None when it is gone (zombies count as gone); [] when the OS does not say."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            raw = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return None
        return None if state == "Z" else [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    try:
        out = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return [] if process_exists(pid) else None
    line = out.stdout.strip()
    if out.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split()[1:]


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(pid: int) -> bool:
    """Alive and not a zombie (a child we have not reaped yet is already dead for our purposes)."""
    _reap(pid)
    return process_cmdline(pid) is not None if process_exists(pid) else False


def is_pensieve_server(pid: int) -> bool:
    """Whether ``pid`` runs ``pensieve serve`` (guards against a reused pid in a stale file)."""
    argv = process_cmdline(pid)
    if argv is None:
        return False
    if not argv:
        return process_exists(pid)  # the OS does not say: trust the pid file
    text = " ".join(argv)
    return "serve" in argv and ("pensieve_cli.main" in text or any(Path(a).name == "pensieve" for a in argv[:2]))


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_process(pid: int, timeout: float = STOP_TIMEOUT_S) -> str:
    """SIGTERM, then SIGKILL after ``timeout`` seconds: ``"stopped"``, ``"killed"`` or ``"gone"``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "gone"
    if wait_gone(pid, timeout):
        return "stopped"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_gone(pid, 5.0)
    return "killed"


# -- who holds a port --------------------------------------------------------------------------------

def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts connections on ``host:port`` (a wildcard bind is reached via loopback)."""
    target = loopback_for(host)
    try:
        with socket.create_connection((target, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (any address), from ``/proc/net/tcp`` and ``tcp6``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _linux_owner(port: int) -> tuple[int, str] | None:
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(proc.name), " ".join(process_cmdline(int(proc.name)) or [])
        except OSError:
            continue  # another user's process, or gone meanwhile
    return None


def _lsof_owner(port: int) -> tuple[int, str] | None:
    try:
        out = subprocess.run(["lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpc"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    fields = {line[:1]: line[1:] for line in out.splitlines() if line}
    return (int(fields["p"]), fields.get("c", "")) if fields.get("p", "").isdigit() else None


def port_owner(port: int) -> tuple[int, str] | None:
    """``(pid, command line)`` of the process listening on ``port``, when this user may see it."""
    return _linux_owner(port) if Path("/proc/net/tcp").exists() else _lsof_owner(port)


def describe_owner(port: int) -> str:
    owner = port_owner(port)
    if owner is None:
        return "another program"
    pid, command = owner
    command = command if len(command) <= 80 else command[:77] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


# -- the pid file ------------------------------------------------------------------------------------

def read_record(path: Path) -> ServerRecord | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerRecord(**{name: data[name] for name in ServerRecord.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        return ServerRecord(0, 0, "", "", "", "")  # unreadable: stale by definition


def write_record(path: Path, record: ServerRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def remove_record(path: Path, pid: int | None = None) -> None:
    """Remove the pid file (only if it still names ``pid``, so a newer server's file survives)."""
    if pid is not None:
        current = read_record(path)
        if current is not None and current.pid not in (pid, 0):
            return
    path.unlink(missing_ok=True)


def pid_file_state(paths: Paths) -> PidFileState:
    """The recorded server if it still runs; a stale pid file is removed and described."""
    record = read_record(paths.pid_file)
    if record is None:
        return PidFileState(None)
    if record.pid > 0 and is_pensieve_server(record.pid):
        return PidFileState(record)
    remove_record(paths.pid_file)
    if record.pid <= 0:
        why = "it could not be read"
    elif running(record.pid):
        why = f"pid {record.pid} is now another program"
    else:
        why = f"process {record.pid} is gone"
    return PidFileState(None, f"removed a stale pid file ({why})")


def running_server(paths: Paths) -> ServerRecord | None:
    return pid_file_state(paths).record


@contextlib.contextmanager
def start_lock(paths: Paths) -> Iterator[None]:
    """Serialise concurrent ``pensieve start`` runs between reading and writing the pid file."""
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.run_dir / "start.lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- logs --------------------------------------------------------------------------------------------

def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """``server.log`` → ``server.log.1`` (… up to ``.keep``) when it has grown past ``max_bytes``."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(keep, 0, -1):
        source = path if n == 1 else path.with_name(f"{path.name}.{n - 1}")
        if source.exists():
            os.replace(source, path.with_name(f"{path.name}.{n}"))
    return True


def read_from(path: Path, offset: int, limit: int = 64 * 1024) -> str:
    """The log written since ``offset`` (its last ``limit`` bytes)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def tail_lines(path: Path, count: int, block: int = 64 * 1024) -> list[str]:
    """The last ``count`` lines of a possibly large file, read from the end."""
    if count <= 0:
        return []
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= count:
            position = max(0, position - block)
            handle.seek(position)
            data = handle.read(end - position)
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]


def failure_reason(log_text: str) -> str:
    """The line that explains a failed start: the CLI's own error line, else the last lines."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("pensieve: "):
            return line[len("pensieve: "):]
    return " | ".join(lines[-3:]) if lines else "no output"


# -- starting ----------------------------------------------------------------------------------------

def serve_command(settings: Settings) -> list[str]:
    """The child's argv: every setting that decides where and what it serves, given explicitly."""
    argv = [sys.executable, "-m", "pensieve_cli.main", "serve", "--host", settings.host,
            "--port", str(settings.port), "--model", settings.default_model, "--engine", settings.engine,
            "--log-level", settings.log_level,
            # The server rotates its own log while it runs; see pensieve_cli.server_log.
            "--log-file", str(settings.paths.server_log), "--log-max-bytes", str(LOG_MAX_BYTES),
            "--log-keep", str(LOG_KEEP)]
    if settings.context_length:
        argv += ["--context-length", str(settings.context_length)]
    return argv


def health(base_url: str, timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any] | None:
    """``/health`` of a Pensieve server at ``base_url``; None when nothing (or something else) answers."""
    import httpx

    try:
        response = httpx.get(f"{base_url}/health", timeout=timeout)
        data = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    if response.status_code != 200 or not isinstance(data, dict) or data.get("status") != "ok":
        return None
    return data


def refuse_taken_port(settings: Settings) -> None:
    """Explain a taken port before spawning, instead of waiting for the child to fail."""
    if not port_open(settings.host, settings.port):
        return
    found = health(settings.base_url)
    if found is not None:
        raise CliError(
            f"a Pensieve server (pid {found.get('pid')}, version {found.get('version')}) already listens at "
            f"{settings.base_url}, started outside `pensieve start` (probably `pensieve serve`); stop it, "
            "or choose another port with --port"
        )
    raise CliError(
        f"port {settings.port} on {settings.host} is already in use by {describe_owner(settings.port)}; "
        "stop that program, or choose another port with --port (and `pensieve setup --port N`)"
    )


def spawn(settings: Settings, log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            serve_command(settings), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env,
        )


def wait_until_healthy(base_url: str, proc: subprocess.Popen, log_path: Path, log_offset: int,
                       timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
    """Poll ``/health`` until this child answers; on exit or timeout raise with the log's reason."""
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            reason = failure_reason(read_from(log_path, log_offset))
            raise CliError(f"the server did not start (exit status {code}): {reason} (log: {log_path})")
        found = health(base_url, timeout=1.0)
        if found is not None and found.get("pid") == proc.pid:
            return found
        if time.monotonic() >= deadline:
            stop_process(proc.pid, timeout=5.0)
            reason = failure_reason(read_from(log_path, log_offset))
            raise CliError(f"the server did not answer at {base_url}/health within {timeout:.0f} s; "
                           f"last log lines: {reason} (log: {log_path})")
        time.sleep(0.2)


def start_background(settings: Settings, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
    """Start the server detached and wait until it answers; returns what ``status --json`` shows."""
    from pensieve_server.auth_token import ensure_token

    paths = settings.paths
    if settings.port == 0:
        raise CliError("the background server needs a fixed port (--port N, not 0)", ExitStatus.USAGE)
    if not settings.auth_token:
        ensure_token(paths.token_file)  # made once here, not raced by the child
    with start_lock(paths):
        existing = running_server(paths)
        if existing is not None:
            raise CliError(f"Pensieve is already running (pid {existing.pid}) at {existing.base_url(settings)}; "
                           "`pensieve restart` restarts it, `pensieve stop` stops it")
        refuse_taken_port(settings)
        log_path = paths.server_log
        rotate_log(log_path)
        offset = log_path.stat().st_size if log_path.exists() else 0
        proc = spawn(settings, log_path)
        record = ServerRecord(proc.pid, settings.port, settings.host,
                              datetime.now(timezone.utc).isoformat(timespec="seconds"), __version__, str(log_path))
        write_record(paths.pid_file, record)
    try:
        found = wait_until_healthy(settings.base_url, proc, log_path, offset, timeout)
    except BaseException:
        if proc.poll() is None:
            stop_process(proc.pid, timeout=5.0)
        remove_record(paths.pid_file, proc.pid)
        raise
    return {**asdict(record), "url": settings.base_url, "model": found.get("model"),
            "engine": found.get("engine"), "device": found.get("device")}


def stop_background(paths: Paths, timeout: float = STOP_TIMEOUT_S) -> tuple[ServerRecord, str] | None:
    """Stop the recorded server; None when none runs. Returns it and ``"stopped"``/``"killed"``/``"gone"``."""
    record = running_server(paths)
    if record is None:
        return None
    how = stop_process(record.pid, timeout)
    remove_record(paths.pid_file, record.pid)
    return record, how
