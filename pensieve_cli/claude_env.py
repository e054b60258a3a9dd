"""The environment Claude Code needs to talk to this Pensieve server, built in one place.

``setup`` writes it into ``settings.json``, ``claude-env`` prints it, ``doctor`` compares against it.
Model variables carry Claude-style names (Claude Code's UI and feature checks expect them); Pensieve's
tier map turns them into local models on the server side.

Long sessions: for a local model with a context of at least 32k tokens, the environment also tells
Claude Code when to compact the conversation itself (it summarises older turns), before Pensieve's
context fitting would have to drop them (see :func:`compact_env` and docs/long-sessions.md).
"""

from __future__ import annotations

import contextlib

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
COMPACT_KEYS = ("CLAUDE_CODE_AUTO_COMPACT_WINDOW", "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE")

# How Claude Code 2.1.197 decides to compact (read from its cli): the window is
# min(model window, max(100k, CLAUDE_CODE_AUTO_COMPACT_WINDOW)), the summary keeps min(max output, 20k)
# of it, and it compacts at min(rest x CLAUDE_AUTOCOMPACT_PCT_OVERRIDE %, rest - 13k) tokens. Without
# a configured window 2.1.197 does not compact before a request, only after a "prompt is too long".
COMPACT_MIN_CONTEXT = 32_000  # below, Claude Code's own prompt fills most of the context: nothing to gain
COMPACT_AT = 0.8  # of the local context; Pensieve's fitting starts at 7/8 of it (room kept for the answer)
CLAUDE_WINDOW_FLOOR = 100_000
CLAUDE_MODEL_WINDOW = 200_000  # MAIN_MODEL's window: the most Claude Code ever assumes
CLAUDE_SUMMARY_ROOM = 20_000


def compact_env(context_length: int) -> dict[str, str]:
    """The variables that make Claude Code compact at ``COMPACT_AT`` of a local context (none below 32k).

    Claude Code counts the prompt from the usage Pensieve reports, so it compacts before Pensieve's
    fitting drops old turns: a summary keeps what they said, and the prompt's prefix (system prompt,
    tools, summary) stays cached, where dropping turns changes the prefix on every later turn.
    """
    if context_length < COMPACT_MIN_CONTEXT:
        return {}
    window = min(max(context_length, CLAUDE_WINDOW_FLOOR), CLAUDE_MODEL_WINDOW)
    percent = min(100.0, 100.0 * int(context_length * COMPACT_AT) / (window - CLAUDE_SUMMARY_ROOM))
    return {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": str(window), "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE": f"{percent:.2f}"}


def claude_env(base_url: str, token: str, context_length: int = 0) -> dict[str, str]:
    """Every variable Claude Code needs, in a fixed order; ``context_length`` (the local model's
    context, 0 when unknown) adds the compaction variables where they help."""
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
        **compact_env(context_length),
    }


def model_context_length(settings: Settings) -> int:
    """The context each request gets on the configured default model (0 when it is not known here)."""
    if settings.engine == "upstream":
        return settings.upstream_context_length
    from pensieve_server.models import catalog
    from pensieve_server.models.store import ModelError, ModelStore

    known = catalog.get(settings.default_model)  # setup may name a model that is pulled only later
    context = known.context_length if known is not None else 0
    with contextlib.suppress(ModelError, OSError, ValueError):
        context = ModelStore(settings.paths.models_dir).get(settings.default_model).context_length
    return min(context, settings.context_length) if settings.context_length > 0 else context


def env_for_settings(settings: Settings, token: str) -> dict[str, str]:
    return claude_env(settings.base_url, token, model_context_length(settings))


def single_quote(value: str) -> str:
    """POSIX single quoting, always quoted so the output reads the same for every value."""
    return "'" + value.replace("'", "'\\''") + "'"


def format_lines(env: dict[str, str], shell: bool = False) -> str:
    """``KEY=VALUE`` lines, or ``export KEY='VALUE'`` lines safe for ``eval`` in sh/bash/zsh."""
    if shell:
        return "".join(f"export {key}={single_quote(value)}\n" for key, value in env.items())
    return "".join(f"{key}={value}\n" for key, value in env.items())
