"""``pensieve claude-env`` and the environment dict shared with setup and doctor."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pensieve_cli.claude_env import (
    COMPACT_KEYS,
    ENV_KEYS,
    HAIKU_MODEL,
    MAIN_MODEL,
    claude_env,
    compact_env,
    format_lines,
    single_quote,
)
from pensieve_cli.main import main
from pensieve_server.settings import Paths

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_env_has_every_variable_claude_code_needs() -> None:
    env = claude_env("http://127.0.0.1:7777", "pensieve-abc")
    assert tuple(env) == ENV_KEYS
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:7777"
    assert env["ANTHROPIC_AUTH_TOKEN"] == "pensieve-abc"
    assert env["API_TIMEOUT_MS"] == "3000000"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"
    for key in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
                "CLAUDE_CODE_SUBAGENT_MODEL"):
        assert env[key] == MAIN_MODEL == "claude-sonnet-4-5"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == HAIKU_MODEL == "claude-3-5-haiku-latest"


def test_format_lines() -> None:
    env = {"A": "1", "B": "it's"}
    assert format_lines(env) == "A=1\nB=it's\n"
    assert format_lines(env, shell=True) == "export A='1'\nexport B='it'\\''s'\n"


@pytest.mark.parametrize("value", ["plain", "it's", "$HOME `x` \"q\"", "a b\tc", ""])
def test_single_quote_survives_the_shell(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf %s {single_quote(value)}"], capture_output=True, text=True, check=True)
    assert out.stdout == value


def test_plain_output_creates_the_token_0600_and_reuses_it(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "claude-env")
    assert rc == 0
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert list(lines) == list(ENV_KEYS)
    assert lines["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:7777"
    token_file = Paths.resolve().token_file
    assert lines["ANTHROPIC_AUTH_TOKEN"] == token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert run_cli(capsys, "claude-env")[1] == out


def test_changes_no_file_but_the_token(capsys: pytest.CaptureFixture[str], isolated_home: Path) -> None:
    claude_dir = isolated_home / ".claude"
    claude_dir.mkdir()
    (claude_dir / "settings.json").write_text('{"env": {"X": "1"}}')
    (isolated_home / ".claude.json").write_text("{}")
    pensieve_home = Path(os.environ["PENSIEVE_HOME"])
    before_home = tree(isolated_home)
    run_cli(capsys, "claude-env", "--shell")
    run_cli(capsys, "claude-env", "--json")
    assert tree(isolated_home) == before_home
    assert list(tree(pensieve_home)) == ["config/token"]


def test_port_follows_config_env_and_flag(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = Paths.resolve().config_file
    config.parent.mkdir(parents=True)
    config.write_text("port = 8001\n")
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:8001\n" in run_cli(capsys, "claude-env")[1]
    monkeypatch.setenv("PENSIEVE_PORT", "8002")
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:8002\n" in run_cli(capsys, "claude-env")[1]
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:8003\n" in run_cli(capsys, "claude-env", "--port", "8003")[1]


def test_configured_token_wins(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSIEVE_AUTH_TOKEN", "pensieve-from-env")
    out = run_cli(capsys, "claude-env", "--json")[1]
    assert json.loads(out)["ANTHROPIC_AUTH_TOKEN"] == "pensieve-from-env"
    assert not Paths.resolve().token_file.exists()


def test_eval_shell_output_sets_the_environment() -> None:
    script = f'eval "$({sys.executable} -m pensieve_cli.main claude-env --shell)" && env'
    proc = subprocess.run(["sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    seen = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert seen["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:7777"
    assert seen["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "claude-3-5-haiku-latest"
    assert seen["ANTHROPIC_AUTH_TOKEN"] == Paths.resolve().token_file.read_text().strip()


def test_setup_writes_the_same_environment(capsys: pytest.CaptureFixture[str], isolated_home: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pensieve_cli.commands import setup

    monkeypatch.setattr(setup, "server_health", lambda base_url: None)
    assert run_cli(capsys, "setup", "--yes", "--port", "8123")[0] == 0
    written = json.loads((isolated_home / ".claude" / "settings.json").read_text())["env"]
    printed = json.loads(run_cli(capsys, "claude-env", "--json")[1])
    assert written == printed


# -- long sessions: Claude Code compacts before Pensieve would drop turns ------------------------------

def claude_code_compact_threshold(env: dict[str, str]) -> int | None:
    """Where Claude Code 2.1.197 compacts under ``env``, as its cli computes it (None: it does not
    compact before a request: with no configured window only a "prompt is too long" triggers it)."""
    if "CLAUDE_CODE_AUTO_COMPACT_WINDOW" not in env:
        return None
    window = min(200_000, max(100_000, int(env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"])))  # floor 1e5, model window
    rest = window - min(64_000, 20_000)  # claude-sonnet-4-5 writes up to 64k; the summary keeps at most 20k
    percent = float(env.get("CLAUDE_AUTOCOMPACT_PCT_OVERRIDE", "0")) or None
    below = rest - 13_000
    return below if percent is None else min(int(rest * percent / 100), below)


@pytest.mark.parametrize("context", [32_000, 32_768, 65_536, 100_000, 131_072, 200_000, 1_000_000])
def test_compaction_comes_before_pensieve_fits_the_prompt(context: int) -> None:
    from pensieve_server.anthropic.fitting import answer_room

    env = compact_env(context)
    assert set(env) == set(COMPACT_KEYS)
    threshold = claude_code_compact_threshold(env)
    assert threshold is not None
    fitting_starts = context - answer_room(32_000, context)  # Claude Code asks for 32000 output tokens
    assert threshold < fitting_starts  # Claude Code summarises before Pensieve drops old turns
    assert threshold >= min(context, 200_000) * 0.6  # and not much earlier than it must


@pytest.mark.parametrize("context", [0, 4096, 8192, 31_999])
def test_small_contexts_get_no_compaction_variables(context: int) -> None:
    assert compact_env(context) == {}
    env = claude_env("http://127.0.0.1:7777", "t", context)
    assert tuple(env) == ENV_KEYS


def test_claude_env_follows_the_configured_models_context(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded model (8k) gets none; a catalog model (32k) gets both, even before it is pulled; a
    context cap below 32k takes them away again."""
    assert list(json.loads(run_cli(capsys, "claude-env", "--json")[1])) == list(ENV_KEYS)
    monkeypatch.setenv("PENSIEVE_DEFAULT_MODEL", "qwen2.5-coder-7b")
    env = json.loads(run_cli(capsys, "claude-env", "--json")[1])
    assert list(env) == [*ENV_KEYS, *COMPACT_KEYS]
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "100000"
    assert abs(claude_code_compact_threshold(env) - 32_768 * 0.8) < 10  # the percentage has two decimals
    monkeypatch.setenv("PENSIEVE_CONTEXT_LENGTH", "16384")
    assert list(json.loads(run_cli(capsys, "claude-env", "--json")[1])) == list(ENV_KEYS)


def test_an_installed_models_own_context_counts(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pensieve_server.models.store import ModelEntry, ModelStore

    store = ModelStore(Paths.resolve().models_dir)
    store.write_manifest(store.folder("long-one"), ModelEntry("long-one", "gguf", "/x.gguf", "test", 131_072, 1))
    monkeypatch.setenv("PENSIEVE_DEFAULT_MODEL", "long-one")
    env = json.loads(run_cli(capsys, "claude-env", "--json")[1])
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "131072"
    assert claude_code_compact_threshold(env) == 131_072 - 33_000  # Claude Code's own margin is below 0.8 here


def test_setup_writes_the_compaction_variables_for_the_chosen_model(capsys: pytest.CaptureFixture[str],
                                                                    isolated_home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pensieve_cli.commands import setup

    monkeypatch.setattr(setup, "server_health", lambda base_url: None)
    assert run_cli(capsys, "setup", "--yes", "--model", "qwen3-8b")[0] == 0
    written = json.loads((isolated_home / ".claude" / "settings.json").read_text())["env"]
    assert {key: written[key] for key in COMPACT_KEYS} == compact_env(32_768)
    assert json.loads(run_cli(capsys, "claude-env", "--json")[1]) == written
