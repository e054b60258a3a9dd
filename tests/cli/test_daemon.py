"""``pensieve start|stop|restart|status|logs`` with the real background server, and the pid-file edge cases."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pensieve_cli import daemon
from pensieve_cli.commands import daemon as daemon_command
from pensieve_cli.main import main
from pensieve_server.settings import Paths, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def importable_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spawned server imports this checkout, installed or not."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A live process that is not a Pensieve server."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def write_record(pid: int, port: int = 1) -> Path:
    record = daemon.ServerRecord(pid, port, "127.0.0.1", "2025-01-01T00:00:00+00:00", "0.1.0", "server.log")
    daemon.write_record(Paths.resolve().pid_file, record)
    return Paths.resolve().pid_file


# -- the real server ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_start_status_logs_restart_stop(cli) -> None:
    port = free_port()
    rc, out, err = cli("start", "--port", str(port))
    assert rc == 0, err
    url = f"http://127.0.0.1:{port}"
    assert f"running at {url} with smollm2-135m" in out
    paths = Paths.resolve()
    record = json.loads(paths.pid_file.read_text())
    assert set(record) == {"pid", "port", "host", "started_at", "version", "log"}
    assert record["port"] == port and record["log"] == str(paths.server_log)
    pid = record["pid"]
    try:
        assert httpx.get(f"{url}/health").json()["pid"] == pid

        rc, _, err = cli("start", "--port", str(port))
        assert rc == 1 and f"already running (pid {pid})" in err

        token = load_settings().auth_token
        body = {"model": "smollm2-135m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
        assert httpx.post(f"{url}/v1/messages", json=body, headers={"x-api-key": token}, timeout=60).status_code == 200
        rc, out, _ = cli("status", "--json")
        status = json.loads(out)
        assert rc == 0 and status["running"] and status["managed"] and status["pid"] == pid
        assert status["url"] == url and status["model"] == "smollm2-135m" and status["engine"] == "llamacpp"
        assert status["memory_rss_bytes"] > 10 * 1024**2 and status["requests"] == 1 and status["tokens_per_s"] >= 0
        cache = status["prefix_cache"]
        assert cache["bytes"] > 0 and cache["hit_rate"] == 0.0 and cache["reused_token_share"] == 0.0  # one cold request
        rc, out, _ = cli("status")
        assert rc == 0 and f"is running at {url}" in out and "requests  1" in out

        rc, out, _ = cli("logs", "-n", "3")
        assert rc == 0 and 0 < len(out.splitlines()) <= 3
        assert "Pensieve serving smollm2-135m" in paths.server_log.read_text()

        rc, out, err = cli("restart", "--port", str(port))  # the config and these flags, like start
        assert rc == 0, err
        assert f"stopped pid {pid}" in out
        new_pid = json.loads(paths.pid_file.read_text())["pid"]
        assert new_pid != pid and not daemon.running(pid)
        pid = new_pid
    finally:
        rc, out, err = cli("stop")
    assert rc == 0 and f"stopped (pid {pid})" in out
    assert not daemon.running(pid) and not paths.pid_file.exists()
    rc, out, _ = cli("status")
    assert rc == 3 and "not running" in out
    rc, out, _ = cli("stop")
    assert rc == 0 and "not running" in out


@pytest.mark.slow
def test_start_failure_is_explained_from_the_log(cli) -> None:
    rc, _, err = cli("start", "--port", str(free_port()), "--model", "no-such-model")
    assert rc == 1
    assert "did not start" in err and "'no-such-model' is not installed" in err
    assert not Paths.resolve().pid_file.exists()


def test_start_refuses_a_port_held_by_another_program(cli) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        rc, _, err = cli("start", "--port", str(port))
    assert rc == 1 and f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in err
    assert not Paths.resolve().pid_file.exists()


# -- pid file ----------------------------------------------------------------------------------------

def test_stale_pid_file_of_a_dead_process_is_removed(cli) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pid_file = write_record(gone.pid)
    rc, out, _ = cli("status")
    assert rc == 3 and f"stale pid file (process {gone.pid} is gone)" in out and "not running" in out
    assert not pid_file.exists()


def test_stale_pid_file_naming_another_program_is_removed_not_killed(cli, sleeper) -> None:
    pid_file = write_record(sleeper.pid)
    rc, out, _ = cli("stop")
    assert rc == 0 and f"pid {sleeper.pid} is now another program" in out and "not running" in out
    assert not pid_file.exists() and sleeper.poll() is None


def test_unreadable_pid_file_is_stale(cli) -> None:
    pid_file = Paths.resolve().pid_file
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text("{not json")
    rc, out, _ = cli("status", "--json")
    assert rc == 3 and json.loads(out)["running"] is False and not pid_file.exists()


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert daemon.stop_process(proc.pid, timeout=0.3) == "killed"
    assert not daemon.running(proc.pid)  # killed and reaped (so Popen no longer sees its status)
    proc.wait(timeout=5)


def test_stop_process_reports_a_gone_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert daemon.stop_process(proc.pid) == "gone"


# -- logs --------------------------------------------------------------------------------------------

def test_log_rotation_keeps_three(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    for suffix, text in (("", "current"), (".1", "one"), (".2", "two"), (".3", "three")):
        (tmp_path / f"server.log{suffix}").write_text(text)
    assert not daemon.rotate_log(log, max_bytes=100)  # small enough: left alone
    assert daemon.rotate_log(log, max_bytes=3)
    assert not log.exists()
    assert [(tmp_path / f"server.log.{n}").read_text() for n in (1, 2, 3)] == ["current", "one", "two"]
    assert not (tmp_path / "server.log.4").exists()
    assert not daemon.rotate_log(log, max_bytes=3)  # nothing to rotate


def test_tail_lines_reads_from_the_end(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {n}\n" for n in range(1000)))
    assert daemon.tail_lines(log, 3, block=16) == ["line 997", "line 998", "line 999"]
    assert daemon.tail_lines(log, 0) == []
    assert len(daemon.tail_lines(log, 5000)) == 1000


def test_logs_without_a_log(cli) -> None:
    rc, _, err = cli("logs")
    assert rc == 3 and "no server log yet" in err and "pensieve start" in err


def test_logs_follow_survives_rotation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "server.log"
    log.write_text("old\n")

    def write() -> None:
        time.sleep(0.3)
        with open(log, "a") as handle:
            handle.write("appended\n")
        time.sleep(0.4)
        daemon.rotate_log(log, max_bytes=0)
        log.write_text("after rotation\n")

    writer = threading.Thread(target=write)
    writer.start()
    daemon_command.follow(log, interval=0.05, until=time.monotonic() + 1.5)
    writer.join()
    out = capsys.readouterr().out
    assert out == "appended\nafter rotation\n"


def test_logs_follow_loses_nothing_when_the_log_rotates_twice_between_polls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "server.log"
    log.write_text("old\n")
    started = threading.Event()

    def write() -> None:
        started.wait()
        with open(log, "a") as handle:
            handle.write("a\n")
        for text in ("b\n", "c\n", "d\n"):  # three rotations inside one poll interval
            daemon.rotate_log(log, max_bytes=0)
            log.write_text(text)

    writer = threading.Thread(target=write)
    writer.start()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        started.set()
        writer.join()  # every rotation happens while follow sleeps
        real_sleep(seconds)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(daemon_command.time, "sleep", sleep)
        daemon_command.follow(log, interval=0.01, until=time.monotonic() + 0.5)
    assert capsys.readouterr().out == "a\nb\nc\nd\n"


def test_failure_reason_prefers_the_cli_error_line() -> None:
    text = "INFO starting\npensieve: port 7777 on 127.0.0.1 is already in use: is Pensieve already running?\n"
    assert daemon.failure_reason(text).startswith("port 7777 on 127.0.0.1 is already in use")
    assert daemon.failure_reason("a\nb\nc\nd\n") == "b | c | d"
