"""What went wrong upstream, said as the Anthropic error a client (and a person) can act on.

The upstream's own status is never passed through blindly: a 401 from the upstream is Pensieve's
configuration problem, not the client's token, and Claude Code would retry a 401 silently for
minutes. 429/503 become 529 ``overloaded_error``, which Claude Code retries with backoff.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from pensieve_server.anthropic.errors import (
    ApiError,
    GatewayTimeout,
    InternalError,
    InvalidRequest,
    NotFound,
    PromptTooLong,
    RequestTooLarge,
    ServerOverloaded,
)

_CONTEXT_WORDS = re.compile(r"context (length|window)|maximum context|too long|exceed", re.IGNORECASE)
_NUMBERS = (
    # vLLM / OpenAI / llama-cpp-python: "maximum context length is 4096 tokens. However, you requested 5000 tokens"
    re.compile(r"maximum context length is (?P<limit>\d+) tokens.*?requested (?P<tokens>\d+)", re.I | re.S),
    # llama-cpp-python: "Requested tokens (5000) exceed context window of 4096"
    re.compile(r"Requested tokens \((?P<tokens>\d+)\) exceed context window of (?P<limit>\d+)", re.I),
    # llama.cpp server: "the request exceeds the available context size (4096 tokens)" / n_prompt_tokens
    re.compile(r"request \((?P<tokens>\d+) tokens\) exceeds the available context size \((?P<limit>\d+)", re.I),
)


def upstream_message(text: str, limit: int = 500) -> str:
    """The upstream's own error text from whatever JSON shape it uses (OpenAI, Anthropic, FastAPI, Ollama)."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        return text.strip()[:limit]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:limit]
        for key in ("error", "detail", "message"):
            if isinstance(data.get(key), str):
                return data[key][:limit]
        if data.get("detail") is not None:
            return json.dumps(data["detail"])[:limit]
    return text.strip()[:limit]


def _too_long(message: str) -> ApiError | None:
    if not _CONTEXT_WORDS.search(message):
        return None
    for pattern in _NUMBERS:
        match = pattern.search(message)
        if match:
            return PromptTooLong(int(match["tokens"]), int(match["limit"]))
    if "prompt is too long" in message.lower():
        return InvalidRequest(message)
    return InvalidRequest(f"prompt is too long for the upstream model: {message}")


def from_status(status: int, body: str, url: str, path: str) -> ApiError:
    """The Anthropic error for an upstream answering ``status`` with ``body`` to ``path``."""
    message = upstream_message(body) or f"HTTP {status}"
    where = f"the upstream at {url}"
    if status in (401, 403):
        return InternalError(f"{where} rejected the API key (HTTP {status}: {message}); set the right one with "
                             "`pensieve config set upstream_api_key KEY` and restart Pensieve")
    if status in (429, 503):
        return ServerOverloaded(f"{where} is overloaded (HTTP {status}: {message})")
    if status == 404:
        return NotFound(f"{where} answered 404 to {path}: {message} (check upstream_model and upstream_api)")
    if status == 413:
        return RequestTooLarge(f"{where} refused the request as too large: {message}")
    if status in (400, 422):
        return _too_long(message) or InvalidRequest(f"{where} rejected the request: {message}")
    return InternalError(f"{where} failed (HTTP {status}): {message}")


def from_transport(exc: httpx.TransportError, url: str, read_timeout: float) -> ApiError:
    """Connection problems: unreachable, silent for too long, or gone mid-answer."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return InternalError(f"upstream at {url} is unreachable ({_reason(exc)}); is it running? "
                             "Check upstream_url (`pensieve config get upstream_url`)")
    if isinstance(exc, httpx.ReadTimeout):
        return GatewayTimeout(f"the upstream at {url} sent nothing for {read_timeout:g} s and was given up on; "
                             "it may be stuck or overloaded (raise upstream_timeout if it needs longer)")
    if isinstance(exc, httpx.TimeoutException):
        return GatewayTimeout(f"the upstream at {url} timed out ({type(exc).__name__})")
    return InternalError(f"the upstream at {url} closed the connection before the answer was complete "
                         f"({_reason(exc)})")


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
