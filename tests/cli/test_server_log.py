"""The background server's log stays bounded while the server runs: rotated by size, raw output included."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from pensieve_cli import daemon
from pensieve_cli.commands import daemon as daemon_command
from pensieve_cli.main import main
from pensieve_server.settings import Paths

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def importable_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The handler in a child process, since it takes over file descriptors 1 and 2.
HANDLER_SCRIPT = """
import logging, os, sys, time
from pathlib import Path
from pensieve_cli.server_log import ServerLogHandler

handler = ServerLogHandler(Path(sys.argv[1]), 300, 2)
log = logging.getLogger("t")
log.addHandler(handler)
log.propagate = False
log.setLevel(logging.INFO)
for n in range(40):
    log.info("line %03d %s", n, "x" * 20)
os.write(2, b"raw stderr after rotation\\n")
print("raw stdout after rotation", flush=True)
handler.watch(0.05)
os.write(2, b"R" * 400 + b"\\n")  # raw output alone past the cap: the watchdog rotates
deadline = time.monotonic() + 10
while not Path(sys.argv[1]).stat().st_size == 0 and time.monotonic() < deadline:
    time.sleep(0.02)
os.write(2, b"after the watchdog rotated\\n")
"""


def test_handler_rotates_and_raw_output_follows_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "server.log"
    proc = subprocess.run([sys.executable, "-c", HANDLER_SCRIPT, str(log)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""  # everything went to the log
    current, first, second = (log.read_text(), log.with_name("server.log.1").read_text(),
                              log.with_name("server.log.2").read_text())
    assert current == "after the watchdog rotated\n"
    # The raw writes after a logging rotation landed in the new file, next to the last record.
    assert "line 039" in first and "raw stderr after rotation" in first and "raw stdout after rotation" in first
    assert "R" * 400 in first
    assert "line 0" in second and "line 000" not in first + second  # only two backups kept
    assert not log.with_name("server.log.3").exists()
    assert len(second.encode()) <= 300


def test_logs_reach_into_the_previous_file_just_after_a_rotation(capsys: pytest.CaptureFixture[str]) -> None:
    log = Paths.resolve().server_log
    log.parent.mkdir(parents=True)
    log.with_name("server.log.1").write_text("one\ntwo\nthree\n")
    log.write_text("four\n")
    assert main(["logs", "-n", "3"]) == 0
    assert capsys.readouterr().out == "two\nthree\nfour\n"


@pytest.mark.slow
def test_running_server_rotates_its_log_and_logs_still_work(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cap = 4000
    monkeypatch.setattr(daemon, "LOG_MAX_BYTES", cap)
    port, paths = free_port(), Paths.resolve()

    def cli(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    rc, _, err = cli("start", "--port", str(port), "--log-level", "debug")
    assert rc == 0, err
    pid = json.loads(paths.pid_file.read_text())["pid"]
    url = f"http://127.0.0.1:{port}"
    log = paths.server_log
    try:
        assert "Pensieve serving smollm2-135m" in "".join(
            p.read_text() for p in log.parent.glob("server.log*"))
        sent: list[str] = []

        def requests() -> None:
            time.sleep(0.3)
            with httpx.Client() as client:
                for n in range(120):
                    path = f"/health?n={n}"
                    assert client.get(f"{url}{path}").status_code == 200
                    sent.append(path)

        sender = threading.Thread(target=requests)
        sender.start()
        # `pensieve logs -f` for long enough that a loaded machine sends all 120 requests meanwhile
        daemon_command.follow(log, interval=0.05, until=time.monotonic() + 12.0)
        sender.join()
        followed = capsys.readouterr().out

        assert log.with_name("server.log.1").exists(), "the running server never rotated its log"
        assert not log.with_name("server.log.4").exists()
        for path in log.parent.glob("server.log*"):
            assert path.stat().st_size <= cap + 1024, path  # bounded: the cap plus at most one record
        assert followed.count("GET /health") == len(sent) == 120  # -f lost nothing across rotations

        # The server's own stdout and stderr follow the rotation (where a native crash would write).
        assert os.readlink(f"/proc/{pid}/fd/2") == str(log)
        assert os.readlink(f"/proc/{pid}/fd/1") == str(log)

        rc, out, _ = cli("logs", "-n", "3")
        assert rc == 0 and len(out.splitlines()) == 3 and "GET /health" in out
        rc, out, _ = cli("status", "--json")
        status = json.loads(out)
        assert rc == 0 and status["running"] and status["pid"] == pid and status["log"] == str(log)
    finally:
        rc, _, err = cli("stop")
    assert rc == 0, err
