"""``pensieve setup`` end to end on temporary homes: files, safety, idempotence, dry run, undo, prompts."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from pensieve_cli import claude_config
from pensieve_cli.claude_env import ENV_KEYS
from pensieve_cli.commands import setup
from pensieve_cli.main import main
from pensieve_server.settings import Paths, load_settings

REPO = Path(__file__).resolve().parents[2]
BOM = b"\xef\xbb\xbf"


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs never see another engineer's server on 7777; tests that want one start it."""
    monkeypatch.setattr(setup, "server_health", lambda base_url: None)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture
def home(isolated_home: Path) -> Path:
    return isolated_home


def claude_json(home: Path) -> Path:
    return home / ".claude.json"


def settings_json(home: Path) -> Path:
    return home / ".claude" / "settings.json"


def paths() -> Paths:
    return Paths.resolve()


def snapshot(*roots: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under the roots with its bytes and mode (symlinks by their target)."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                found[str(path)] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}


# -- fresh machine -----------------------------------------------------------------------------------

def test_no_files_creates_everything(cli, home: Path) -> None:
    rc, out, err = cli("setup", "--yes")
    assert rc == 0, err
    assert json.loads(claude_json(home).read_text()) == {"hasCompletedOnboarding": True}
    env = json.loads(settings_json(home).read_text())["env"]
    assert list(env) == list(ENV_KEYS)
    token = paths().token_file.read_text().strip()
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:7777" and env["ANTHROPIC_AUTH_TOKEN"] == token
    assert env["ANTHROPIC_MODEL"] == "claude-sonnet-4-5"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "claude-3-5-haiku-latest"
    for private in (paths().token_file, paths().config_file, settings_json(home), claude_json(home)):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    settings = load_settings()
    assert settings.port == 7777 and settings.default_model == "smollm2-135m"
    assert dict(settings.tiers) == {"opus": "smollm2-135m", "sonnet": "smollm2-135m", "haiku": "smollm2-135m"}
    assert token not in out  # the diff shows <token>, never the secret
    assert "created ~/.claude.json" in out and "Next:" in out and "claude" in out


def test_model_and_port_flags(cli, home: Path) -> None:
    rc, out, err = cli("setup", "--yes", "--model", "qwen3-8b", "--port", "8181")
    assert rc == 0, err
    settings = load_settings()
    assert settings.port == 8181 and settings.default_model == "qwen3-8b"
    assert set(settings.tiers.values()) == {"qwen3-8b"}
    assert json.loads(settings_json(home).read_text())["env"]["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8181"
    assert "pensieve models pull qwen3-8b" in out  # not downloaded: recorded, and the next step says so


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "gpt-17"], "unknown model 'gpt-17'"),
        (["--port", "0"], "--port: the port must be between 1 and 65535"),
        (["--undo", "--port", "8000"], "--undo cannot be combined"),
    ],
)
def test_bad_flags_are_usage_errors(cli, home: Path, argv: list[str], message: str) -> None:
    rc, _, err = cli("setup", "--yes", *argv)
    assert rc == 2 and message in err
    assert not claude_json(home).exists()


def test_claude_config_dir_is_respected(cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "cc"))
    assert cli("setup", "--yes")[0] == 0
    assert json.loads((tmp_path / "cc" / ".claude.json").read_text())["hasCompletedOnboarding"] is True
    assert "env" in json.loads((tmp_path / "cc" / "settings.json").read_text())
    assert not claude_json(home).exists() and not settings_json(home).exists()


# -- existing files ----------------------------------------------------------------------------------

CLAUDE_JSON = (
    '{\n  "numStartups": 42,\n  "hasCompletedOnboarding": false,\n  "theme": "dark",\n'
    '  "projects": {\n    "/src/app": {\n      "allowedTools": [\n        "Bash"\n      ]\n    }\n  },\n'
    '  "userID": "abc"\n}'
)
SETTINGS_JSON = (
    '{\n  "model": "opus",\n  "env": {\n    "MY_VAR": "keep me",\n    "ANTHROPIC_BASE_URL": "https://old.example"\n'
    '  },\n  "permissions": {\n    "allow": [\n      "Bash(ls:*)"\n    ]\n  }\n}\n'
)


def write_existing(home: Path) -> None:
    claude_json(home).write_text(CLAUDE_JSON)
    settings_json(home).parent.mkdir()
    settings_json(home).write_text(SETTINGS_JSON)


def test_existing_files_keep_every_key_and_their_order(cli, home: Path) -> None:
    write_existing(home)
    assert cli("setup", "--yes")[0] == 0
    data = json.loads(claude_json(home).read_text())
    assert list(data) == ["numStartups", "hasCompletedOnboarding", "theme", "projects", "userID"]
    assert data == {**json.loads(CLAUDE_JSON), "hasCompletedOnboarding": True}
    # only the one line changed: the rest is byte for byte what Claude Code wrote
    assert claude_json(home).read_text() == CLAUDE_JSON.replace('"hasCompletedOnboarding": false',
                                                                '"hasCompletedOnboarding": true')
    settings = json.loads(settings_json(home).read_text())
    assert list(settings) == ["model", "env", "permissions"]
    assert settings["permissions"] == {"allow": ["Bash(ls:*)"]} and settings["model"] == "opus"
    assert list(settings["env"])[:2] == ["MY_VAR", "ANTHROPIC_BASE_URL"]
    assert settings["env"]["MY_VAR"] == "keep me"
    assert settings["env"]["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:7777"


def test_existing_config_toml_keeps_other_settings(cli, home: Path) -> None:
    config = paths().config_file
    config.parent.mkdir(parents=True)
    config.write_text('temperature = 0.7\nlog_level = "debug"\n')
    config.chmod(0o644)
    assert cli("setup", "--yes", "--port", "7001")[0] == 0
    settings = load_settings()
    assert settings.temperature == 0.7 and settings.log_level == "debug" and settings.port == 7001
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_invalid_json_is_untouched_and_named_with_its_line(cli, home: Path) -> None:
    settings_json(home).parent.mkdir()
    broken = b'{\n  "env": {\n    "A": "1",\n  }\n}\n'
    settings_json(home).write_bytes(broken)
    before = snapshot(home)
    rc, out, err = cli("setup", "--yes")
    assert rc == 1
    assert err.startswith("pensieve: ~/.claude/settings.json is not valid JSON (line 4")
    assert "nothing was changed" in err and "Traceback" not in err
    assert snapshot(home) == before
    assert not paths().config_file.exists() and not paths().token_file.exists()


def test_json_with_a_bom_is_read_and_written_back(cli, home: Path) -> None:
    claude_json(home).write_bytes(BOM + b'{\n  "theme": "light"\n}\n')
    assert cli("setup", "--yes")[0] == 0
    raw = claude_json(home).read_bytes()
    assert raw == BOM + b'{\n  "theme": "light",\n  "hasCompletedOnboarding": true\n}\n'
    assert cli("setup", "--yes")[1].startswith(("✓ nothing to change", "+ nothing to change"))


def test_read_only_file_is_a_clear_error(cli, home: Path) -> None:
    write_existing(home)
    settings_json(home).chmod(0o444)
    before = snapshot(home)
    rc, _, err = cli("setup", "--yes")
    assert rc == 1
    assert "~/.claude/settings.json is read-only; make it writable" in err
    assert snapshot(home) == before


def test_symlinked_files_are_written_through(cli, home: Path) -> None:
    dotfiles = home / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "settings.json").write_text('{"theme": "dark"}')
    (dotfiles / "claude.json").write_text("{}")
    settings_json(home).parent.mkdir()
    settings_json(home).symlink_to(dotfiles / "settings.json")
    claude_json(home).symlink_to(dotfiles / "claude.json")
    assert cli("setup", "--yes")[0] == 0
    assert settings_json(home).is_symlink() and claude_json(home).is_symlink()
    assert json.loads((dotfiles / "settings.json").read_text())["theme"] == "dark"
    assert "ANTHROPIC_AUTH_TOKEN" in json.loads((dotfiles / "settings.json").read_text())["env"]
    assert json.loads((dotfiles / "claude.json").read_text()) == {"hasCompletedOnboarding": True}


# -- running it again, previewing, undoing -----------------------------------------------------------

def test_second_run_changes_nothing_and_says_so(cli, home: Path) -> None:
    write_existing(home)
    assert cli("setup", "--yes")[0] == 0
    before = snapshot(home, paths().config_dir, paths().data_dir)
    rc, out, _ = cli("setup", "--yes")
    assert rc == 0
    assert "nothing to change" in out and "---" not in out
    assert snapshot(home, paths().config_dir, paths().data_dir) == before  # no new backup either


def test_dry_run_changes_nothing(cli, home: Path) -> None:
    write_existing(home)
    before = snapshot(home)
    rc, out, _ = cli("setup", "--dry-run", "--port", "9999")
    assert rc == 0
    assert "+++ ~/.claude/settings.json (after)" in out and '"ANTHROPIC_BASE_URL": "http://127.0.0.1:9999"' in out
    assert '-  "hasCompletedOnboarding": false,' in out
    assert "Dry run: nothing was changed." in out
    assert snapshot(home) == before
    assert not Path(os.environ["PENSIEVE_HOME"]).exists()  # not even the token


def test_undo_restores_byte_identical_and_removes_created_files(cli, home: Path) -> None:
    claude_json(home).write_bytes(BOM + CLAUDE_JSON.encode())
    claude_json(home).chmod(0o644)
    before = snapshot(home)
    assert cli("setup", "--yes")[0] == 0
    assert settings_json(home).exists() and paths().config_file.exists()
    rc, out, _ = cli("setup", "--undo")
    assert rc == 0
    assert "restored ~/.claude.json" in out and "removed ~/.claude/settings.json" in out
    assert snapshot(home) == before
    assert not (home / ".claude").exists() and not paths().config_file.exists()
    rc, _, err = cli("setup", "--undo")
    assert rc == 3 and "nothing to undo" in err


def test_undo_restores_existing_files_after_two_setups(cli, home: Path) -> None:
    write_existing(home)
    before = snapshot(home)
    assert cli("setup", "--yes", "--port", "7100")[0] == 0
    after_first = snapshot(home)
    assert cli("setup", "--yes", "--port", "7200")[0] == 0
    assert cli("setup", "--undo")[0] == 0
    assert snapshot(home) == after_first
    assert cli("setup", "--undo")[0] == 0
    assert snapshot(home) == before


def test_concurrent_write_during_setup_is_not_lost(cli, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_existing(home)
    real_write_temp = claude_config._write_temp
    raced = []

    def racing(dest: Path, data: bytes, mode: int, owner: object) -> Path:
        tmp = real_write_temp(dest, data, mode, owner)
        if dest == claude_json(home) and not raced:
            raced.append(dest)  # Claude Code starts and bumps its counter right now
            claude_json(home).write_text(CLAUDE_JSON.replace('"numStartups": 42', '"numStartups": 43'))
        return tmp

    monkeypatch.setattr(claude_config, "_write_temp", racing)
    assert cli("setup", "--yes")[0] == 0
    data = json.loads(claude_json(home).read_text())
    assert raced and data["numStartups"] == 43 and data["hasCompletedOnboarding"] is True


# -- no terminal -------------------------------------------------------------------------------------

def test_no_tty_and_no_yes_refuses_politely(cli, home: Path) -> None:
    rc, out, err = cli("setup")
    assert rc == 2
    assert "this is not a terminal: run `pensieve setup --yes`" in err
    assert not claude_json(home).exists()


def test_no_tty_subprocess_refuses_instead_of_hanging(home: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pensieve_cli.main", "setup"], cwd=REPO, env=subprocess_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("pensieve: setup asks questions, but this is not a terminal")
    assert not claude_json(home).exists()


def test_yes_in_a_subprocess_finishes_quickly(home: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pensieve_cli.main", "setup", "--yes", "--port", str(free_port())],
                          cwd=REPO, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    assert "the server is not running" in proc.stdout and "Next:" in proc.stdout


# -- the server --------------------------------------------------------------------------------------

@pytest.fixture
def health_server() -> Iterator[int]:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = json.dumps({"status": "ok", "model": "smollm2-135m"}).encode()
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_reports_a_running_server(cli, home: Path, health_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real health check
    rc, out, _ = cli("setup", "--yes", "--port", str(health_server))
    assert rc == 0
    assert f"server running at http://127.0.0.1:{health_server} (model smollm2-135m)" in out
    assert out.rstrip().endswith("Next:\n  claude")


def test_start_calls_the_daemon_when_there_is_one(cli, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    daemon = types.ModuleType("pensieve_cli.commands.daemon")
    daemon.start_background = lambda settings: started.append(settings.port)  # type: ignore[attr-defined]
    monkeypatch.setattr(setup, "daemon_module", lambda: daemon)
    rc, out, _ = cli("setup", "--yes", "--start", "--port", "7301")
    assert rc == 0 and started == [7301]
    assert "started but does not answer" in out and "pensieve status" in out  # the fake never answers


def test_start_does_not_start_a_model_that_is_not_downloaded(cli, home: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = types.ModuleType("pensieve_cli.commands.daemon")
    daemon.start_background = lambda settings: pytest.fail("started a missing model")  # type: ignore[attr-defined]
    monkeypatch.setattr(setup, "daemon_module", lambda: daemon)
    rc, out, _ = cli("setup", "--yes", "--start", "--model", "qwen3-4b")
    assert rc == 0 and "Next:\n  pensieve models pull qwen3-4b\n  pensieve start\n  claude" in out


# -- the interactive flow, through a real pseudo-terminal --------------------------------------------

def spawn_setup(*argv: str):
    import pexpect

    return pexpect.spawn(sys.executable, ["-m", "pensieve_cli.main", "setup", *argv], cwd=str(REPO),
                         env=subprocess_env(), encoding="utf-8", timeout=30, dimensions=(50, 160))


def test_interactive_setup_with_questionary(home: Path) -> None:
    import pexpect

    port = free_port()
    child = spawn_setup()
    child.expect("Which model should answer Claude Code")
    child.expect("recommended")  # the catalogue, with sizes and a pick for this machine
    child.send("\x1b[B")  # down: from smollm2-135m to qwen2.5-coder-1.5b
    child.send("\r")
    child.expect("Port for the Pensieve server")
    child.send("\x7f" * 8 + str(port) + "\r")
    child.expect("Apply these changes")
    assert not claude_json(home).exists()
    child.send("y")
    child.expect(pexpect.EOF)
    child.close()
    transcript = child.before
    assert child.exitstatus == 0, transcript
    settings = load_settings()
    assert settings.default_model == "qwen2.5-coder-1.5b" and settings.port == port
    assert json.loads(settings_json(home).read_text())["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    assert json.loads(claude_json(home).read_text()) == {"hasCompletedOnboarding": True}
    assert "pensieve models pull qwen2.5-coder-1.5b" in transcript


def test_interactive_decline_changes_nothing(home: Path) -> None:
    import pexpect

    write_existing(home)
    before = snapshot(home)
    child = spawn_setup("--model", "smollm2-135m", "--port", str(free_port()))
    child.expect("Apply these changes")
    child.send("n")
    child.expect("Nothing was changed")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert snapshot(home) == before
    assert not paths().token_file.exists()



def test_interactive_ctrl_c_stops_without_changes(home: Path) -> None:
    import pexpect

    child = spawn_setup()
    child.expect("Which model should answer Claude Code")
    child.send("\x03")
    child.expect("interrupted")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert not claude_json(home).exists() and not Path(os.environ["PENSIEVE_HOME"]).exists()


# -- ui: what the person sees ------------------------------------------------------------------------

class FakeStream:
    def __init__(self, tty: bool, encoding: str = "utf-8") -> None:
        self.tty, self.encoding, self.text = tty, encoding, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.text += text
        return len(text)


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from pensieve_cli import ui

    assert ui.paint("x", "red", FakeStream(tty=True)) == "\x1b[31mx\x1b[0m"
    assert ui.paint("x", "red", FakeStream(tty=False)) == "x"
    monkeypatch.setenv("NO_COLOR", "1")
    assert ui.paint("x", "red", FakeStream(tty=True)) == "x"


def test_symbols_fall_back_to_ascii() -> None:
    from pensieve_cli import ui

    assert ui.symbols(FakeStream(tty=False, encoding="utf-8")).ok == "✓"
    stream = FakeStream(tty=False, encoding="ascii")
    ui.success("done", stream)  # type: ignore[arg-type]
    ui.failure("broken", stream)  # type: ignore[arg-type]
    assert stream.text == "+ done\nx broken\n"


def test_diff_redacts_the_token_and_marks_new_files() -> None:
    from pensieve_cli import ui

    lines = ui.diff_lines("~/.claude/settings.json", None, '{\n  "t": "pensieve-secret"\n}', redact=["pensieve-secret"])
    assert lines[:2] == ["--- /dev/null", "+++ ~/.claude/settings.json (after)"]
    assert '+  "t": "<token>"' in lines and not any("pensieve-secret" in line for line in lines)


def test_print_json() -> None:
    from pensieve_cli import ui

    stream = FakeStream(tty=False)
    ui.print_json({"b": 1, "a": "é"}, stream)  # type: ignore[arg-type]
    assert stream.text == '{\n  "b": 1,\n  "a": "é"\n}\n'
