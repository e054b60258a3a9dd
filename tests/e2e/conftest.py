"""Fixtures for end-to-end tests: the real embedded model, the real server, the real Claude Code CLI."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pensieve_cli.claude_env import claude_env as product_env
from tests.serverutil import RunningServer, embedded_llamacpp_server

REPO = Path(__file__).resolve().parents[2]
MAX_OUTPUT_TOKENS = 128


def claude_binary() -> str:
    """The pinned Claude Code CLI (.ci/run installs it into node_modules), else one on PATH."""
    local = REPO / "node_modules" / ".bin" / "claude"
    found = str(local) if local.exists() else shutil.which("claude")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("the Claude Code CLI is not installed; .ci/run installs it with npm")
    pytest.skip("Claude Code CLI not installed (npm install @anthropic-ai/claude-code)")


@pytest.fixture(scope="module")
def llamacpp_server(tmp_path_factory) -> Iterator[RunningServer]:
    """The embedded model on llama.cpp behind the real Waitress server, shared by a module."""
    with embedded_llamacpp_server(tmp_path_factory.mktemp("pensieve-home")) as server:
        yield server


def claude_env(server: RunningServer, home: Path) -> dict[str, str]:
    """A clean environment for Claude Code pointed at ``server``, with its own HOME."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM", "TMPDIR", "SSL_CERT_FILE")}
    # Exactly what `pensieve setup` writes into settings.json (and `pensieve claude-env` prints).
    # The 135M model sometimes rambles until its context is full, which takes minutes; Claude Code's own
    # output cap keeps every answer short, so a run takes about a minute whatever the model says.
    return {**keep, "HOME": str(home), **product_env(server.base_url, server.token),
            "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_THINKING": "1",
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(MAX_OUTPUT_TOKENS)}
