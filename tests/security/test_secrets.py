"""The API token: required, compared exactly, stored 0600, and never written to logs or answers.

Logs are captured at DEBUG from every logger (Pensieve, Flask, Waitress) while authenticated,
rejected, streaming, failing and oversized requests are made; neither the server's token nor a
wrong token a client sent (often someone's real Anthropic key) may appear in them.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from pensieve_server.auth_token import TOKEN_PREFIX, ensure_token, fingerprint, generate_token, write_private
from pensieve_server.engine.scripted import ScriptedBackend
from pensieve_server.settings import load_settings
from tests.security import assert_anthropic_error, run_serve_command
from tests.serverutil import RunningServer, running_server

GOOD: dict[str, Any] = {"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
SERVER_TOKEN = "pensieve-" + "S3cr3t" * 6
CLIENT_SECRET = "sk-ant-api03-" + "N0tForLogs" * 5  # a real-looking key a confused client might send


@pytest.fixture
def server() -> Any:
    with running_server({"scripted": ScriptedBackend(delay_s=0.001)}, auth_token=SERVER_TOKEN,
                        max_body_bytes=64 * 1024) as running:
        running.token = SERVER_TOKEN
        yield running


def _all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as a handler would write it, tracebacks and raw args included."""
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        parts.append(repr(record.__dict__))
    return "\n".join(parts)


# -- auth -----------------------------------------------------------------------------------------

def test_both_header_styles_authenticate(server: RunningServer) -> None:
    for headers in ({"x-api-key": SERVER_TOKEN}, {"Authorization": f"Bearer {SERVER_TOKEN}"},
                    {"Authorization": f"bearer {SERVER_TOKEN}"}, {"Authorization": f"BEARER  {SERVER_TOKEN}"},
                    {"Authorization": "Basic xyz", "x-api-key": SERVER_TOKEN}):
        response = httpx.post(server.base_url + "/v1/messages", json=GOOD, headers=headers, timeout=10)
        assert response.status_code == 200, (headers, response.text)


@pytest.mark.parametrize("headers", [
    {},
    {"x-api-key": ""},
    {"x-api-key": "wrong"},
    {"x-api-key": SERVER_TOKEN[:-1]},
    {"x-api-key": SERVER_TOKEN + "x"},
    {"x-api-key": SERVER_TOKEN.upper()},
    {"x-api-key": CLIENT_SECRET},
    {"Authorization": f"Bearer {CLIENT_SECRET}"},
    {"Authorization": SERVER_TOKEN},
    {"Authorization": f"Token {SERVER_TOKEN}"},
    {"Authorization": f"Bearer {SERVER_TOKEN}x"},
    {"Authorization": f"Bearer {CLIENT_SECRET}", "x-api-key": SERVER_TOKEN},  # a Bearer header decides
    {"X-Api-Key": ("é" + SERVER_TOKEN).encode("latin-1")},
], ids=lambda headers: ",".join(f"{k}" for k in headers) or "none")
def test_wrong_or_missing_token_is_401(server: RunningServer, headers: dict[str, Any]) -> None:
    for method, path in (("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"), ("GET", "/v1/models"),
                         ("GET", "/v1/models/scripted"), ("GET", "/metrics")):
        response = httpx.request(method, server.base_url + path, headers=headers, timeout=10,
                                 json=GOOD if method == "POST" else None)
        body = assert_anthropic_error(response, 401, "authentication_error")
        assert CLIENT_SECRET not in response.text and SERVER_TOKEN not in response.text
        assert "www-authenticate" not in response.headers or "Bearer" in response.headers["www-authenticate"]
        assert body["error"]["message"]


def test_public_routes_answer_without_token_and_reveal_nothing(server: RunningServer) -> None:
    for path in ("/", "/health", "/openapi.json"):
        response = httpx.get(server.base_url + path, timeout=10)
        assert response.status_code == 200
        assert SERVER_TOKEN not in response.text and fingerprint(SERVER_TOKEN) not in response.text
    assert httpx.head(server.base_url + "/", timeout=10).status_code == 200


# -- logs -----------------------------------------------------------------------------------------

def test_token_never_reaches_the_logs(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("waitress", "werkzeug", "pensieve", "pensieve_server", "flask"):
        caplog.set_level(logging.DEBUG, logger=name)
    backend = server.pool.loaded()[0].backend
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        bearer = {"Authorization": f"Bearer {SERVER_TOKEN}"}
        key = {"x-api-key": SERVER_TOKEN}
        assert http.post("/v1/messages", json=GOOD, headers=bearer).status_code == 200
        assert http.post("/v1/messages", json={**GOOD, "stream": True}, headers=key).status_code == 200
        assert http.post("/v1/messages/count_tokens", json=GOOD, headers=key).status_code == 200
        assert http.get("/v1/models", headers=bearer).status_code == 200
        assert http.get("/metrics", headers=key).status_code == 200
        assert http.post("/v1/messages", json={**GOOD, "max_tokens": -1}, headers=key).status_code == 400
        assert http.post("/v1/messages", content=b"{nope", headers={**key, "content-type": "application/json"}
                         ).status_code == 400
        assert http.post("/v1/messages", json={**GOOD, "model": "nope"}, headers=key).status_code == 404
        big = {**GOOD, "messages": [{"role": "user", "content": "x" * 100_000}]}
        assert http.post("/v1/messages", json=big, headers=key).status_code == 413
        assert http.get("/v1/nothing", headers=key).status_code == 404
        assert http.post("/v1/messages", json=GOOD, headers={"x-api-key": CLIENT_SECRET}).status_code == 401
        assert http.post("/v1/messages", json=GOOD,
                         headers={"Authorization": f"Bearer {CLIENT_SECRET}"}).status_code == 401
        assert http.get("/health", headers={**key, "Host": "evil.example"}).status_code == 403
        backend.fail_after = 2  # an engine failure logs a traceback
        assert http.post("/v1/messages", json=GOOD, headers=key).status_code == 500
        assert http.post("/v1/messages", json={**GOOD, "stream": True}, headers=key).status_code == 200
        backend.fail_after = None
        assert http.get("/v1/models", headers={"x-big": "a" * 70_000, **key}).status_code == 431
    text = _all_log_text(caplog)
    assert any(record.levelno == logging.DEBUG for record in caplog.records), "DEBUG logging was not captured"
    assert "generation failed" in text  # the failure paths really logged
    assert SERVER_TOKEN not in text
    assert CLIENT_SECRET not in text


def test_serve_output_does_not_print_the_token(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, captured = run_serve_command(monkeypatch, ["--host", "0.0.0.0", "--port", "0", "--log-level", "debug"])
    assert status == 0
    token = captured["settings"].auth_token
    out = capsys.readouterr()
    assert token and token not in out.out + out.err
    assert token not in _all_log_text(caplog)


def test_settings_repr_hides_the_token() -> None:
    settings = load_settings({"auth_token": SERVER_TOKEN})
    assert SERVER_TOKEN not in repr(settings) and SERVER_TOKEN not in str(settings)


# -- the token file -------------------------------------------------------------------------------

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_token_file_is_created_0600_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        path = tmp_path / "config" / "token"
        token = ensure_token(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert path.read_text(encoding="utf-8").strip() == token
    assert ensure_token(path) == token  # stable once made
    assert not list(path.parent.glob(".token.*"))  # no temp file left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_rewriting_a_world_readable_token_file_makes_it_0600(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old\n", encoding="utf-8")
    path.chmod(0o644)
    write_private(path, generate_token() + "\n")
    assert _mode(path) == 0o600


def test_settings_read_the_stored_token_and_it_is_strong() -> None:
    settings = load_settings()
    token = ensure_token(settings.paths.token_file)
    assert token.startswith(TOKEN_PREFIX) and len(token) - len(TOKEN_PREFIX) >= 40  # 32 random bytes, base64url
    assert load_settings().auth_token == token
    assert len({generate_token() for _ in range(100)}) == 100
    assert fingerprint(token) != token and token not in fingerprint(token)


def test_token_file_contents_are_not_in_health_or_metrics(server: RunningServer) -> None:
    with server.client(timeout=10) as http:
        for path in ("/health", "/metrics", "/v1/models", "/"):
            response = http.get(path)
            assert response.status_code == 200
            assert SERVER_TOKEN not in response.text
        assert SERVER_TOKEN not in json.dumps(dict(http.post("/v1/messages", json=GOOD).headers))
