"""A scripted backend for protocol tests that need exact model output (tool calls, stop sequences).

Tokens are Unicode code points, so token counts are exact and easy to predict in tests. It goes
through the same generation loop, scheduler and HTTP layers as the real engines.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence

from pensieve_server.engine.base import Backend, ModelInfo, SamplingParams, Step

STOP_TOKEN = -1
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_REPLY = "Hello from the scripted model."


class ScriptedBackend(Backend):
    """Replies with queued texts, in order; records every prompt it was given."""

    name = "scripted"
    device = "cpu"

    def __init__(self, context_length: int = 200_000, delay_s: float = 0.0) -> None:
        self.info = ModelInfo("scripted", context_length, CHATML_TEMPLATE, "", "<|im_end|>")
        self.replies: deque[str] = deque()
        self.prompts: list[str] = []
        self.delay_s = delay_s
        self.fail_after: int | None = None
        self.tokens_streamed = 0
        self._last_prompt: list[int] = []
        self._lock = threading.Lock()

    def enqueue(self, text: str) -> None:
        self.replies.append(text)

    def tokenize(self, text: str) -> list[int]:
        return [ord(ch) for ch in text]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(chr(t) for t in tokens if t >= 0)

    def is_stop_token(self, token: int) -> bool:
        return token == STOP_TOKEN

    def stream(self, prompt: Sequence[int], params: SamplingParams, cancel: threading.Event) -> Iterator[Step]:
        prompt = list(prompt)
        self.prompts.append(self.detokenize(prompt))
        cached = 0
        for a, b in zip(self._last_prompt, prompt, strict=False):
            if a != b:
                break
            cached += 1
        self._last_prompt = prompt
        reply = self.replies.popleft() if self.replies else DEFAULT_REPLY
        for index, char in enumerate(reply):
            if cancel.is_set():
                return
            if self.fail_after is not None and index >= self.fail_after:
                raise RuntimeError("scripted failure")
            if self.delay_s:
                time.sleep(self.delay_s)
            self.tokens_streamed += 1
            yield Step(ord(char), char, cached if index == 0 else 0)
        yield Step(STOP_TOKEN, "", cached if not reply else 0)
