"""Shared fixtures: every test gets its own PENSIEVE_HOME and HOME, so no test touches real user files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pensieve_server.engine.factory import register_engine
from pensieve_server.engine.scripted import ScriptedBackend
from pensieve_server.models.store import ModelStore

# The scripted test double is an engine only in tests: production code never imports it.
register_engine("scripted", lambda entry, context_length: ScriptedBackend(context_length or 200_000, name=entry.name))


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


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """One model store for the session's real-model tests, which only read it: the embedded GGUF is
    converted for MLX once, not once per module."""
    return ModelStore(tmp_path_factory.mktemp("models"))
