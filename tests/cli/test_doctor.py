"""``pensieve doctor`` against the real background server: a healthy setup passes, each broken one fails."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pensieve_cli.claude_env import env_for_settings
from pensieve_cli.daemon import start_background, stop_background
from pensieve_cli.doctor import checklist as checks
from pensieve_cli.main import main
from pensieve_server.auth_token import ensure_token, fingerprint
from pensieve_server.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
ALLOWED_WARNINGS = {"mlx", "claude"}  # MLX runs on the CPU off Apple Silicon; `claude` may be absent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One background server for the module, in its own PENSIEVE_HOME with its port in config.toml."""
    home = tmp_path_factory.mktemp("pensieve-server")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PENSIEVE_HOME", str(home))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        for name in ("PENSIEVE_PORT", "PENSIEVE_AUTH_TOKEN", "PENSIEVE_ENGINE", "PENSIEVE_HOST"):
            mp.delenv(name, raising=False)
        (home / "config").mkdir()
        (home / "config" / "config.toml").write_text(f"port = {free_port()}\n")
        settings = load_settings()
        start_background(settings)
        try:
            yield home
        finally:
            stop_background(settings.paths)


@pytest.fixture
def served(server_home: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """This test's HOME (Claude Code's files) with the module's running server."""
    monkeypatch.setenv("PENSIEVE_HOME", str(server_home))
    return load_settings()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def configure_claude(home: Path, settings: Settings, **env: str) -> Path:
    """What `pensieve setup` writes, with ``env`` overriding single keys."""
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
    path = home / ".claude" / "settings.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"env": {**env_for_settings(settings, settings.auth_token), **env}}, indent=2))
    return path


def lines(out: str) -> dict[str, str]:
    """Check name → its whole line."""
    found = {}
    for line in out.splitlines():
        if line[:2] in ("✓ ", "✗ ", "! ", "- ") and ": " in line:
            found[line[2:].split(": ", 1)[0]] = line
    return found


# -- healthy -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_healthy_setup_passes_every_check(cli, served: Settings, isolated_home: Path) -> None:
    rc, _, err = cli("setup", "--yes")
    assert rc == 0, err
    rc, out, err = cli("doctor")
    assert rc == 0, out + err
    found = lines(out)
    for name in ("python", "engine", "model", "server", "model loads", "resources", "claude.json", "settings.json",
                 "token", "API timeout", "shell env", "self-test /health", "self-test auth", "self-test message",
                 "self-test stream", "self-test count_tokens", "self-test model names"):
        assert found[name].startswith("✓ "), found.get(name)
    assert found["mlx"][:2] in ("✓ ", "! ")
    assert "✗" not in out and not [n for n, line in found.items() if line[0] == "!" and n not in ALLOWED_WARNINGS]
    assert "loaded by the running server" in found["model loads"]
    assert "claude-sonnet-4-5 → smollm2-135m" in found["self-test model names"]
    assert served.auth_token not in out and fingerprint(served.auth_token) in found["token"]
    assert "Pensieve is ready" in out

    rc, out, _ = cli("doctor", "--json", "--no-load")
    report = json.loads(out)
    assert rc == 0 and report["ok"] is True and report["summary"]["fail"] == 0
    by_name = {c["name"]: c for c in report["checks"]}
    assert set(by_name["self-test stream"]["data"]) >= {"ttft_ms", "tokens_per_s", "output_tokens"}
    assert by_name["server"]["status"] == "ok" and by_name["server"]["data"]["model"] == "smollm2-135m"


@pytest.mark.slow
@pytest.mark.claude_code
def test_claude_print_runs_against_the_server(cli, served: Settings, isolated_home: Path) -> None:
    if shutil.which("claude") is None:
        pytest.skip("the Claude Code CLI is not on PATH")
    configure_claude(isolated_home, served)
    rc, out, err = cli("doctor", "--claude", "--json", "--no-load")
    result = {c["name"]: c for c in json.loads(out)["checks"]}["claude --print"]
    assert result["status"] == "ok", result
    assert "ttft_ms" in result["data"]


# -- broken states -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_wrong_token(cli, served: Settings, isolated_home: Path) -> None:
    configure_claude(isolated_home, served, ANTHROPIC_AUTH_TOKEN="pensieve-wrong-token")
    rc, out, _ = cli("doctor", "--no-load")
    line = lines(out)["token"]
    assert rc == 4 and line.startswith("✗ token: ANTHROPIC_AUTH_TOKEN sha256:")
    assert "(from settings.json) is refused by the server" in line
    assert "refused by the server" in line and "retries silently for minutes" in line and "pensieve setup" in line
    assert fingerprint("pensieve-wrong-token") in line
    assert "pensieve-wrong-token" not in out and served.auth_token not in out


@pytest.mark.slow
def test_invalid_settings_json(cli, served: Settings, isolated_home: Path) -> None:
    configure_claude(isolated_home, served).write_text('{"env": {"ANTHROPIC_BASE_URL": }')
    rc, out, _ = cli("doctor", "--no-load")
    found = lines(out)
    assert rc == 4
    assert found["settings.json"].startswith("✗ settings.json: ~/.claude/settings.json is not valid JSON (line 1")
    assert found["token"].startswith("- token: skipped")


@pytest.mark.slow
def test_model_missing(cli, served: Settings, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSIEVE_DEFAULT_MODEL", "no-such-model")
    configure_claude(isolated_home, served)
    rc, out, _ = cli("doctor", "--no-load")
    found = lines(out)
    assert rc == 4
    assert found["model"].startswith("✗ model: no-such-model is not installed")
    assert found["server"].startswith("! server:") and "pensieve restart" in found["server"]


@pytest.mark.slow
def test_shell_env_the_file_overrides_is_a_warning(cli, served: Settings, isolated_home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    configure_claude(isolated_home, served)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://api.anthropic.com")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-leftover")
    rc, out, _ = cli("doctor", "--no-load")
    line = lines(out)["shell env"]
    assert rc == 0 and line.startswith("! shell env: this shell sets ANTHROPIC_API_KEY (sha256:")
    assert "ANTHROPIC_BASE_URL=https://api.anthropic.com; settings.json overrides it" in line
    assert "x-api-key" in line and "unset ANTHROPIC_API_KEY ANTHROPIC_BASE_URL" in line
    assert "sk-ant-leftover" not in out


@pytest.mark.slow
def test_shell_token_used_when_the_file_has_none(cli, served: Settings, isolated_home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = configure_claude(isolated_home, served)
    data = json.loads(path.read_text())
    del data["env"]["ANTHROPIC_AUTH_TOKEN"]
    path.write_text(json.dumps(data))
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "pensieve-stale-token")
    rc, out, _ = cli("doctor", "--no-load")
    found = lines(out)
    assert rc == 4
    assert found["shell env"].startswith("✗ shell env: this shell sets ANTHROPIC_AUTH_TOKEN (sha256:")
    assert "Claude Code uses because settings.json does not set it" in found["shell env"]
    assert found["token"].startswith("✗ token: ANTHROPIC_AUTH_TOKEN") and "(from this shell)" in found["token"]
    assert "pensieve-stale-token" not in out


def test_server_down(cli, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("PENSIEVE_PORT", str(port))
    ensure_token(load_settings().paths.token_file)  # what `pensieve setup` leaves behind
    configure_claude(isolated_home, load_settings())
    rc, out, _ = cli("doctor")
    found = lines(out)
    assert rc == 4
    assert found["server"] == f"✗ server: not running at http://127.0.0.1:{port} (port {port} is free) — fix: pensieve start"
    assert found["self-test"].startswith("- self-test: skipped")
    assert found["model loads"].startswith("✓ model loads: smollm2-135m loads on llamacpp")
    assert found["token"].startswith("✓ token:")  # compared with the configured token while the server is down


def test_port_taken_by_another_program(cli, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setenv("PENSIEVE_PORT", str(port))
        configure_claude(isolated_home, load_settings())
        rc, out, _ = cli("doctor", "--no-load")
    line = lines(out)["server"]
    assert rc == 4 and line.startswith(f"✗ server: port {port} is held by pid {os.getpid()} (")
    assert "not by Pensieve" in line and "pensieve setup --port" in line


# -- single checks without a server ------------------------------------------------------------------

def context(**env: str) -> checks.Context:
    return checks.Context(load_settings(), {**os.environ, **env}, health=None)


@pytest.mark.parametrize(
    ("claude_json", "settings_env", "check", "status", "text"),
    [
        (None, {}, checks.check_claude_json, "fail", "does not exist: Claude Code will ask you to log in"),
        ({"hasCompletedOnboarding": False}, {}, checks.check_claude_json, "fail", "onboarding is not marked done"),
        ({}, {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}, checks.check_settings_json, "fail",
         "points Claude Code at http://127.0.0.1:9, but Pensieve serves http://127.0.0.1:7777"),
        ({}, {"ANTHROPIC_BASE_URL": None}, checks.check_settings_json, "fail", "sets no ANTHROPIC_BASE_URL"),
        ({}, {"ANTHROPIC_BASE_URL": "http://localhost:7777/"}, checks.check_settings_json, "ok", "localhost:7777"),
        ({}, {"API_TIMEOUT_MS": "600000"}, checks.check_api_timeout, "warn", "API_TIMEOUT_MS=600000"),
        ({}, {"ANTHROPIC_AUTH_TOKEN": "other"}, checks.check_token, "fail", "differs from the server's token"),
    ],
)
def test_claude_config_states(isolated_home: Path, claude_json, settings_env, check, status, text) -> None:
    if claude_json is not None:
        (isolated_home / ".claude.json").write_text(json.dumps(claude_json))
    settings = load_settings({"auth_token": "pensieve-configured"})
    env = {k: v for k, v in {**env_for_settings(settings, settings.auth_token), **settings_env}.items() if v}
    (isolated_home / ".claude").mkdir()
    (isolated_home / ".claude" / "settings.json").write_text(json.dumps({"env": env}))
    ctx = checks.Context(settings, os.environ, health=None)
    result = check(ctx)
    assert result.status == status and text in result.detail, result
    assert status == "ok" or result.fix


def test_checks_never_raise_without_any_config(isolated_home: Path) -> None:
    ctx = context()
    results = [check(ctx) for check in checks.LOCAL_CHECKS if check is not checks.check_model_loads]
    assert all(r.status in ("ok", "warn", "fail", "skip") and r.detail for r in results)
