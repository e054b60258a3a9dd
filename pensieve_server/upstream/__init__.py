"""The ``upstream`` engine: Pensieve in front of another server instead of a local model.

The upstream speaks either OpenAI Chat Completions (vLLM, llama.cpp server, Ollama, LM Studio,
mlx_lm.server) — translated both ways by :mod:`.translate` — or Anthropic Messages, forwarded by
:mod:`.passthrough`. Either way the client sees the same Anthropic events, errors, auth and logging
as with a local model: :mod:`pensieve_server.providers.upstream` is what the Messages pipeline calls.
"""

from __future__ import annotations

from pensieve_server.settings import Settings

ENGINE = "upstream"
DISCOVER = "upstream"  # the model name meaning "whatever the upstream's /v1/models lists first"


def is_upstream(settings: Settings) -> bool:
    """Whether this server forwards every request to ``settings.upstream_url``."""
    return settings.engine == ENGINE
