"""Shared fixtures: every test gets its own PENSIEVE_HOME and HOME, so no test touches real user files."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point Pensieve and Claude Code config at temp folders; clear env that would leak in."""
    home = tmp_path / "home"
    home.mkdir()
    pensieve_home = tmp_path / "pensieve"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PENSIEVE_HOME", str(pensieve_home))
    for name in ("CLAUDE_CONFIG_DIR", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL",
                 "PENSIEVE_PORT", "PENSIEVE_AUTH_TOKEN", "PENSIEVE_ENGINE", "PENSIEVE_HOST", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    return home
