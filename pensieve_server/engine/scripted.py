"""A scripted backend for protocol tests that need exact model output (like simonw/llm's ``MockModel``).

Tokens are Unicode code points, so token counts are exact and easy to predict, and every prompt
that reached the engine can be read back as text. It goes through the same generation loop,
scheduler and HTTP layers as the real engines, and reports prefix-cache hits the way they do.

A test double: no production module imports it. Tests register it as the "scripted" engine
(:func:`pensieve_server.engine.factory.register_engine`, in tests/conftest.py) or hand it to the pool.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence

from pensieve_server.anthropic.template import CHATML_TEMPLATE
from pensieve_server.engine.base import Backend, ModelInfo, PrefixMatch, SamplingParams, Step

STOP_TOKEN = -1  # never produced by tokenize(): code points are >= 0
DEFAULT_REPLY = "Hello from the scripted model."


class ScriptedBackend(Backend):
    """Replies with queued texts, in order, one character per token, then a stop token.

    ``delay_s`` slows every token down and ``fail_after`` raises mid-stream, for fault tests;
    ``prompts`` and ``params`` record what reached the engine.
    """

    name = "scripted"
    device = "cpu"

    def __init__(
        self,
        context_length: int = 200_000,
        delay_s: float = 0.0,
        *,
        replies: Sequence[str] = (),
        default_reply: str = DEFAULT_REPLY,
        fail_after: int | None = None,
        name: str = "scripted",
    ) -> None:
        self.info = ModelInfo(name, context_length, CHATML_TEMPLATE, "", "<|im_end|>")
        self.replies: deque[str] = deque(replies)
        self.default_reply = default_reply
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []
        self.tokens_streamed = 0
        self.closed = False
        self._live: list[int] = []  # what a real backend would hold in its KV cache

    def enqueue(self, text: str) -> None:
        """Queue the next reply; each generation takes one, ``default_reply`` once the queue is empty."""
        self.replies.append(text)

    def tokenize(self, text: str) -> list[int]:
        return list(map(ord, text))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(chr(t) for t in tokens if t >= 0)

    def is_stop_token(self, token: int) -> bool:
        return token == STOP_TOKEN

    def stream(self, prompt: Sequence[int], params: SamplingParams, cancel: threading.Event
               ) -> Iterator[Step | PrefixMatch]:
        prompt = list(prompt)
        self.prompts.append(self.detokenize(prompt))
        self.params.append(params)
        reply = self.replies.popleft() if self.replies else self.default_reply
        cached = 0
        for a, b in zip(self._live, prompt, strict=False):
            if a != b:
                break
            cached += 1
        cached = min(cached, max(len(prompt) - 1, 0))  # like a real engine: the last token is evaluated
        self._live = prompt
        yield PrefixMatch(cached)
        for index, char in enumerate(reply):
            if cancel.is_set():
                return
            if self.fail_after is not None and index >= self.fail_after:
                raise RuntimeError(f"scripted failure after {index} tokens")
            if self.delay_s:
                time.sleep(self.delay_s)
            self.tokens_streamed += 1
            yield Step(ord(char), char, cached)
            cached = 0
            self._live.append(ord(char))  # evaluated once the caller asks for the next token
        yield Step(STOP_TOKEN, "", cached)

    def close(self) -> None:
        self.closed = True
