"""The environment Claude Code needs to talk to this Pensieve server, built in one place.

``setup`` writes it into ``settings.json``, ``claude-env`` prints it, ``doctor`` compares against it.
Model variables carry Claude-style names (Claude Code's UI and feature checks expect them); Pensieve's
tier map turns them into local models on the server side.
"""

from __future__ import annotations

from pensieve_server.settings import Settings

MAIN_MODEL = "claude-sonnet-4-5"
HAIKU_MODEL = "claude-3-5-haiku-latest"
API_TIMEOUT_MS = "3000000"  # local prefill of a large prompt can take minutes

MODEL_KEYS = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
)
ENV_KEYS = (
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    "API_TIMEOUT_MS",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    "CLAUDE_CODE_ATTRIBUTION_HEADER",
    *MODEL_KEYS,
)


def claude_env(base_url: str, token: str) -> dict[str, str]:
    """Every variable Claude Code needs, in a fixed order."""
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_AUTH_TOKEN": token,
        "API_TIMEOUT_MS": API_TIMEOUT_MS,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
        "ANTHROPIC_MODEL": MAIN_MODEL,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": MAIN_MODEL,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": MAIN_MODEL,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": HAIKU_MODEL,
        "CLAUDE_CODE_SUBAGENT_MODEL": MAIN_MODEL,
    }


def env_for_settings(settings: Settings, token: str) -> dict[str, str]:
    return claude_env(settings.base_url, token)


def single_quote(value: str) -> str:
    """POSIX single quoting, always quoted so the output reads the same for every value."""
    return "'" + value.replace("'", "'\\''") + "'"


def format_lines(env: dict[str, str], shell: bool = False) -> str:
    """``KEY=VALUE`` lines, or ``export KEY='VALUE'`` lines safe for ``eval`` in sh/bash/zsh."""
    if shell:
        return "".join(f"export {key}={single_quote(value)}\n" for key, value in env.items())
    return "".join(f"{key}={value}\n" for key, value in env.items())
