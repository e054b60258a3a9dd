"""Who can reach the server: the bind policy, and the Host/Origin guard against DNS rebinding and browsers.

``pensieve serve --host 0.0.0.0`` is exercised through the real CLI (model and socket faked); the
Host/Origin checks run against the real app on Waitress, or through Flask's test client where the
bind address would otherwise have to be a real non-loopback interface.
"""

from __future__ import annotations

import logging
import stat
from typing import Any

import httpx
import pytest

from pensieve_server.app import create_app
from pensieve_server.bind_policy import BindRefused, check_bind, is_loopback
from pensieve_server.engine.pool import ModelPool
from pensieve_server.engine.scripted import ScriptedBackend
from pensieve_server.models.store import ModelStore
from pensieve_server.settings import load_settings
from tests.security import assert_anthropic_error, run_serve_command
from tests.serverutil import RunningServer, running_server

GOOD: dict[str, Any] = {"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
CORS_HEADERS = ("access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-headers",
                "access-control-allow-methods")


# -- bind policy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]",
                                  "::ffff:127.0.0.1"])
def test_loopback_binds_need_nothing(host: str) -> None:
    assert is_loopback(host)
    assert check_bind(host, "") is None
    assert check_bind(host, "tok") is None


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.168.1.20", "10.0.0.1", "fe80::1%eth0", "my-laptop.lan",
                                  "localhost.evil.example", "127.0.0.1.nip.io"])
def test_exposed_binds_without_token_are_refused(host: str) -> None:
    assert not is_loopback(host)
    for token in ("", "   "):
        with pytest.raises(BindRefused) as refused:
            check_bind(host, token)
        message = str(refused.value)
        assert "token" in message and "127.0.0.1" in message  # says why and what to do instead


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_exposed_binds_with_token_warn(host: str) -> None:
    warning = check_bind(host, "pensieve-secret-token")
    assert warning and "token" in warning and "reachable" in warning
    assert "pensieve-secret-token" not in warning


def test_serve_on_all_interfaces_warns_and_always_has_a_token(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """``pensieve serve --host 0.0.0.0`` with no token configured: one is created (0600), a warning logged,
    and the app it builds refuses unauthenticated requests from any Host."""
    caplog.set_level(logging.DEBUG)
    status, captured = run_serve_command(monkeypatch, ["--host", "0.0.0.0", "--port", "0"])
    assert status == 0
    settings = captured["settings"]
    assert settings.host == "0.0.0.0" and settings.auth_token
    assert stat.S_IMODE(settings.paths.token_file.stat().st_mode) == 0o600
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "0.0.0.0" in r.getMessage()]
    assert warnings and "token" in warnings[0].getMessage()
    client = captured["app"].test_client()
    response = client.post("/v1/messages", json=GOOD, headers={"Host": "192.168.1.20:7777"})
    assert response.status_code == 401 and response.get_json()["error"]["type"] == "authentication_error"
    response = client.post("/v1/messages", json={**GOOD, "model": "claude-sonnet-4-5"},
                           headers={"Host": "192.168.1.20:7777", "x-api-key": settings.auth_token})
    assert response.status_code == 200, response.get_data(as_text=True)


def test_serve_on_loopback_does_not_warn(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, captured = run_serve_command(monkeypatch, ["--port", "0"])
    assert status == 0 and captured["settings"].host == "127.0.0.1"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_serve_refuses_exposed_bind_without_token(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Defence in depth: if no token can be had, an exposed bind must stop, not serve without auth."""
    import pensieve_server.auth_token

    monkeypatch.setattr(pensieve_server.auth_token, "ensure_token", lambda path: "")
    status, captured = run_serve_command(monkeypatch, ["--host", "0.0.0.0", "--port", "0"])
    assert status != 0 and captured["app"] is None
    assert "token" in capsys.readouterr().err


# -- Host and Origin ------------------------------------------------------------------------------

@pytest.fixture
def server() -> Any:
    with running_server({"scripted": ScriptedBackend()}) as running:
        yield running


def _port(server: RunningServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example",
                                  "localhost.evil.example:{port}", "evil.example:127.0.0.1", "192.168.1.20:{port}",
                                  "127.0.0.1@evil.example", "0.0.0.0:{port}"])
def test_foreign_host_is_403_everywhere(server: RunningServer, host: str) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own name as Host."""
    headers = {"Host": host.format(port=_port(server)), "x-api-key": server.token}
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for method, path in (("POST", "/v1/messages"), ("GET", "/v1/models"), ("GET", "/health"), ("HEAD", "/"),
                             ("GET", "/metrics"), ("POST", "/v1/messages/count_tokens")):
            response = http.request(method, path, headers=headers, json=GOOD if method == "POST" else None)
            assert response.status_code == 403, (method, path, response.text)
            if method != "HEAD":
                assert_anthropic_error(response, 403, "permission_error")


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}",
                                  "127.0.0.1", "localhost"])
def test_loopback_host_names_are_served(server: RunningServer, host: str) -> None:
    headers = {"Host": host.format(port=_port(server)), "x-api-key": server.token}
    response = httpx.post(server.base_url + "/v1/messages", json=GOOD, headers=headers, timeout=10)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:3000", "https://claude.ai",
                                    "chrome-extension://abcdef"])
def test_foreign_origin_is_403_without_cors_headers(server: RunningServer, origin: str) -> None:
    """A browser page may not call the API (or read /health) unless allowed_origins lists its Origin."""
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for method, path in (("POST", "/v1/messages"), ("GET", "/health"), ("OPTIONS", "/v1/messages")):
            headers = {"Origin": origin, "x-api-key": server.token, "Access-Control-Request-Method": "POST"}
            response = http.request(method, path, headers=headers, json=GOOD if method == "POST" else None)
            assert_anthropic_error(response, 403, "permission_error")
            for name in CORS_HEADERS:
                assert name not in response.headers, (method, path, dict(response.headers))


def test_no_cors_headers_by_default(server: RunningServer) -> None:
    with server.client(timeout=10) as http:
        for response in (http.post("/v1/messages", json=GOOD), http.get("/v1/models"), http.get("/health"),
                         http.get("/openapi.json"), http.post("/v1/messages", json={})):
            for name in CORS_HEADERS:
                assert name not in response.headers, dict(response.headers)


def test_allowed_origin_gets_cors_headers_others_do_not() -> None:
    with running_server({"scripted": ScriptedBackend()}, allowed_origins=("http://app.local:5173",)) as server, \
            server.client(timeout=10) as http:
        response = http.post("/v1/messages", json=GOOD, headers={"Origin": "http://app.local:5173"})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://app.local:5173"
        assert "Origin" in response.headers["vary"]
        assert "access-control-allow-credentials" not in response.headers
        for origin in ("http://app.local", "http://app.local:5173.evil.example", "https://app.local:5173", "null"):
            response = http.post("/v1/messages", json=GOOD, headers={"Origin": origin})
            assert_anthropic_error(response, 403, "permission_error")
            assert "access-control-allow-origin" not in response.headers


def test_allowed_origin_preflight_succeeds() -> None:
    with running_server({"scripted": ScriptedBackend()}, allowed_origins=("http://app.local:5173",)) as server:
        response = httpx.options(server.base_url + "/v1/messages", timeout=10, headers={
            "Origin": "http://app.local:5173", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key,content-type,anthropic-version"})
        assert response.status_code in (200, 204), response.text
        assert response.headers["access-control-allow-origin"] == "http://app.local:5173"
        allowed = response.headers.get("access-control-allow-headers", "").lower()
        assert "x-api-key" in allowed and "content-type" in allowed
        assert "POST" in response.headers.get("access-control-allow-methods", "")
        # The preflight opens nothing: the real request still needs the token.
        response = httpx.post(server.base_url + "/v1/messages", json=GOOD, timeout=10,
                              headers={"Origin": "http://app.local:5173"})
        assert response.status_code == 401


def _app_client(host: str) -> Any:
    settings = load_settings({"auth_token": "tok-" + "x" * 20, "host": host})
    pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
    pool.add("scripted", ScriptedBackend(), engine="scripted")
    return create_app(settings.replace(default_model="scripted"), pool).test_client(), settings.auth_token


def test_named_bind_address_accepts_its_own_name_only() -> None:
    """Bound to a LAN address, requests naming that address pass the Host check; other names do not."""
    client, token = _app_client("192.168.1.20")
    auth = {"x-api-key": token}
    assert client.get("/v1/models", headers={**auth, "Host": "192.168.1.20:7777"}).status_code == 200
    assert client.get("/v1/models", headers={**auth, "Host": "127.0.0.1:7777"}).status_code == 200
    response = client.get("/v1/models", headers={**auth, "Host": "evil.example:7777"})
    assert response.status_code == 403 and response.get_json()["error"]["type"] == "permission_error"


def test_wildcard_bind_skips_host_check_but_never_auth() -> None:
    """On 0.0.0.0 any Host is fine (the machine has many names), so the token is the only gate."""
    client, token = _app_client("0.0.0.0")
    response = client.post("/v1/messages", json=GOOD, headers={"Host": "evil.example"})
    assert response.status_code == 401
    response = client.post("/v1/messages", json=GOOD, headers={"Host": "evil.example", "x-api-key": token})
    assert response.status_code == 200
    response = client.post("/v1/messages", json=GOOD,
                           headers={"Host": "evil.example", "x-api-key": token, "Origin": "http://evil.example"})
    assert response.status_code == 403
