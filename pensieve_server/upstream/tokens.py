"""Token counts for an upstream model, which Pensieve cannot tokenize itself.

The estimate (used for context fitting, ``message_start`` usage and ``count_tokens`` when the
upstream has no tokenizer endpoint) is deliberately simple and conservative:

    tokens ≈ ceil(characters / 3.5) + 4 per message + 8 per tool

over the text actually sent (system, messages, tool calls and the tools' JSON). Real tokenizers
give 3.5–4.5 characters a token for English, code and JSON, so this rarely undercounts; the
fixed terms stand for the chat template's role markers. It depends only on the blocks it counts,
so fitting with it stays prefix-stable.

``count_tokens`` asks the upstream's tokenizer when it has one — llama.cpp server and vLLM
(``POST /tokenize``), llama-cpp-python's server (``POST /extras/tokenize/count``) — on the same
flattened text, plus the same per-message and per-tool terms.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from typing import Any

from pensieve_server.anthropic.errors import ApiError
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.upstream.client import UpstreamClient
from pensieve_server.upstream.translate import to_openai_messages, to_openai_tools

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.5
MESSAGE_OVERHEAD = 4
TOOL_OVERHEAD = 8
TOKENIZE_TIMEOUT_S = 10.0
_UNSUPPORTED = (404, 405, 422, 501)


def _text(request: MessagesRequest) -> tuple[str, int, int]:
    """The flattened text sent for ``request``, its message count and its tool count."""
    messages = to_openai_messages(request)
    tools = to_openai_tools(request.tools)
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(part.get("text", "")) for part in content if isinstance(part, dict))
        for call in message.get("tool_calls") or []:
            parts.append(call["function"]["name"] + call["function"]["arguments"])
    parts.extend(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    return "\n".join(parts), len(messages), len(tools)


def overhead(messages: int, tools: int) -> int:
    return MESSAGE_OVERHEAD * messages + TOOL_OVERHEAD * tools


def estimate_tokens(request: MessagesRequest) -> int:
    """The documented estimate (see the module docstring)."""
    text, messages, tools = _text(request)
    return math.ceil(len(text) / CHARS_PER_TOKEN) + overhead(messages, tools)


class TokenCounter:
    """Counts with the upstream's tokenizer endpoint when it has one (found once), else estimates."""

    def __init__(self, client: UpstreamClient, model: str) -> None:
        self.client = client
        self.model = model
        self._endpoint: str | None = None
        self._probed = False
        self._lock = threading.Lock()

    def _ask(self, path: str, text: str) -> int | None:
        body: dict[str, Any] = (
            {"input": text, "model": self.model} if path.startswith("/extras")
            else {"content": text, "prompt": text, "model": self.model, "add_special": False}
        )
        try:
            data = self.client.request_json("POST", path, body, timeout=TOKENIZE_TIMEOUT_S)
        except ApiError as exc:
            if exc.status in _UNSUPPORTED:
                return None
            raise
        if isinstance(data, dict):
            if isinstance(data.get("count"), int):
                return data["count"]
            if isinstance(data.get("tokens"), list):
                return len(data["tokens"])
        return None

    def upstream_count(self, text: str) -> int | None:
        """Tokens of ``text`` by the upstream's tokenizer; None when it has none (or it failed)."""
        with self._lock:
            probed, endpoint = self._probed, self._endpoint
        try:
            if probed:
                return self._ask(endpoint, text) if endpoint else None
            for path in ("/tokenize", "/extras/tokenize/count"):
                count = self._ask(path, text)
                if count is not None:
                    with self._lock:
                        self._probed, self._endpoint = True, path
                    log.info("upstream %s counts tokens with %s", self.client.display, path)
                    return count
            with self._lock:
                self._probed = True
        except ApiError as exc:
            log.info("upstream token count failed, estimating instead: %s", exc.message)
        return None

    def count(self, request: MessagesRequest) -> int:
        text, messages, tools = _text(request)
        counted = self.upstream_count(text)
        if counted is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN) + overhead(messages, tools)
        return counted + overhead(messages, tools)
