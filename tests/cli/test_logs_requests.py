"""``pensieve logs`` shows one line per request of the background server (the real one, real model)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

from pensieve_cli.main import main
from pensieve_server.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def importable_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spawned server imports this checkout, installed or not."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_logs_show_a_line_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    rc, _, err = cli(capsys, "start", "--port", str(port))
    assert rc == 0, err
    try:
        url, token = f"http://127.0.0.1:{port}", load_settings().auth_token
        body = {"model": "claude-3-5-haiku-latest", "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hi. Kumquat-secret-9."}]}
        answered = httpx.post(f"{url}/v1/messages", json=body, headers={"x-api-key": token}, timeout=300)
        assert answered.status_code == 200, answered.text
        refused = httpx.post(f"{url}/v1/messages", json={**body, "max_tokens": -1}, headers={"x-api-key": token},
                             timeout=60)
        assert refused.status_code == 400
        rc, out, _ = cli(capsys, "logs", "-n", "30")
    finally:
        cli(capsys, "stop")
    assert rc == 0
    usage = answered.json()["usage"]
    line = next(line for line in out.splitlines() if f"request {answered.headers['request-id']} " in line)
    assert " INFO " in line and "model=claude-3-5-haiku-latest local=smollm2-135m engine=llamacpp" in line
    assert f"prompt={usage['input_tokens'] + usage['cache_read_input_tokens']} " in line
    assert f"output={usage['output_tokens']} " in line and "queue=" in line and "ttft=" in line and "prepare=" in line
    assert f"stop={answered.json()['stop_reason']}" in line
    refusal = next(line for line in out.splitlines() if f"request {refused.headers['request-id']} " in line)
    assert "rejected: 400 invalid_request_error" in refusal
    assert "Kumquat" not in out and token not in out  # neither prompt text nor the token is ever logged
