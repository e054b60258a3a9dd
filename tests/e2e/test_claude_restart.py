"""The real Claude Code CLI across a server restart: the second session reads its prefix from disk.

`pensieve start`, one `claude --print`, `pensieve restart` (a new server process on the same
PENSIEVE_HOME, nothing in memory), another `claude --print`: the second must report Claude Code's
prompt as read from the cache, and the server must say a prefix state was restored from disk.
Times are printed for the record, never asserted (the machine is shared).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pensieve_cli.main import main
from pensieve_server.engine.disk_states import folder_usage, resolve_disk_bytes
from pensieve_server.settings import Paths, load_settings
from tests.e2e.conftest import REPO, claude_env
from tests.e2e.test_claude_code import answered_by_the_model, run_claude

# Two cold Claude Code prefills at worst (the first, and a follow-up whose fitted prompt differs) on
# a busy 2-core machine: 290 s each was seen, beyond the suite's default per-test limit.
pytestmark = [pytest.mark.claude_code, pytest.mark.slow, pytest.mark.timeout(1500)]
CLAUDE_TIMEOUT_S = 1800  # a cold prefill of Claude Code's prompt on a loaded 2-core machine


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    # The spawned server imports this checkout, installed or not.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_a_state(folder: Path, timeout_s: float = 600.0) -> bool:
    """Saving runs in the background after the answer: wait for the file (a condition, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if list(folder.glob("*.kvstate")):
            return True
        time.sleep(0.5)
    return False


def ttft_ms(base_url: str, token: str) -> float:
    """Mean time to first token of the requests this server process answered (from /metrics)."""
    import httpx

    text = httpx.get(f"{base_url}/metrics", headers={"x-api-key": token}, timeout=10).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("pensieve_time_to_first_token_seconds_")}
    count = values.get("pensieve_time_to_first_token_seconds_count", 0)
    return 1000 * values.get("pensieve_time_to_first_token_seconds_sum", 0) / count if count else 0.0


def test_print_after_a_restart_restores_the_prefix_from_disk(cli, tmp_path: Path) -> None:
    port = free_port()
    rc, _, err = cli("start", "--port", str(port), "--engine", "llamacpp")
    assert rc == 0, err
    settings = load_settings()
    server = SimpleNamespace(base_url=f"http://127.0.0.1:{port}", token=settings.auth_token)
    env = claude_env(server, tmp_path / "claude-home")
    work = tmp_path / "project"
    work.mkdir()
    states = Paths.resolve().prefix_states_dir
    try:
        first = answered_by_the_model(run_claude(["--print", "Say hello in 5 words", "--output-format", "json"],
                                                 env, work, timeout=CLAUDE_TIMEOUT_S))
        assert first["usage"]["input_tokens"] > 2000, first["usage"]  # cold: nothing in memory or on disk
        cold_ms = ttft_ms(server.base_url, server.token)

        assert wait_for_a_state(states), "the first session's prefix state was not saved to disk"
        rc, _, err = cli("restart", "--port", str(port), "--engine", "llamacpp")
        assert rc == 0, err

        second = answered_by_the_model(run_claude(["--print", "Say hello in 5 words", "--output-format", "json"],
                                                  env, work, timeout=CLAUDE_TIMEOUT_S))
        assert second["usage"]["cache_read_input_tokens"] > 2000, second["usage"]
        assert second["usage"]["input_tokens"] < first["usage"]["input_tokens"] / 4, second["usage"]
        restored_ms = ttft_ms(server.base_url, server.token)
        rc, out, _ = cli("status", "--json")
        disk = json.loads(out)["disk_cache"]
        assert rc == 0 and disk["hits"] >= 1 and disk["files"] >= 1 and disk["bytes"] > 0, disk
        print(f"TTFT cold {cold_ms:.0f} ms, after restart {restored_ms:.0f} ms; disk {disk}")
    finally:
        rc, _, _ = cli("stop")
    assert rc == 0
    used, _ = folder_usage(states)
    assert 0 < used <= resolve_disk_bytes(settings.disk_cache_bytes, states)
