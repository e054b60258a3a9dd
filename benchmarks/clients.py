"""Streaming clients that time what a user sees: Anthropic Messages (Pensieve) and OpenAI (peers).

Times are ``time.perf_counter()`` taken when each server-sent event has fully arrived. TTFT runs
from just before the request is sent to the first content delta; decode time from the first
content delta to the last.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from pensieve_server.upstream.client import sse_events  # the product's one SSE parser


@dataclass
class Sample:
    """One timed request. Token counts are what the server reported, else counted by the harness."""

    workload: str
    rep: int = 0
    ttft_s: float | None = None
    decode_s: float | None = None
    total_s: float | None = None
    prompt_tokens: int = 0  # tokens prefilled (not taken from a cache)
    cached_tokens: int = 0  # prompt tokens reused from a prefix cache
    output_tokens: int = 0
    deltas: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft_s is not None

    @property
    def prefill_tps(self) -> float | None:
        return self.prompt_tokens / self.ttft_s if self.ok and self.ttft_s and self.prompt_tokens else None

    @property
    def decode_tps(self) -> float | None:
        if not self.ok or not self.decode_s or self.output_tokens < 2:
            return None
        return (self.output_tokens - 1) / self.decode_s

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "prefill_tps": self.prefill_tps, "decode_tps": self.decode_tps}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sample:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class StreamTimes:
    """Raw observations of one stream, before they become a :class:`Sample`."""

    start: float
    first: float | None = None
    last: float | None = None
    end: float | None = None
    deltas: int = 0
    text: str = ""
    input_tokens: int | None = None
    cached_tokens: int = 0
    output_tokens: int | None = None
    error: str | None = None

    def delta(self, text: str) -> None:
        now = time.perf_counter()
        self.first = self.first if self.first is not None else now
        self.last = now
        self.deltas += 1
        self.text += text

    def sample(self, workload: str, rep: int, prompt_tokens: int, output_tokens: int) -> Sample:
        """A Sample, using the server's counts when it gave them and the fallbacks otherwise."""
        end = self.end if self.end is not None else time.perf_counter()
        return Sample(
            workload=workload,
            rep=rep,
            ttft_s=None if self.first is None else self.first - self.start,
            decode_s=None if self.first is None or self.last is None else self.last - self.first,
            total_s=end - self.start,
            prompt_tokens=self.input_tokens if self.input_tokens is not None else prompt_tokens,
            cached_tokens=self.cached_tokens,
            output_tokens=self.output_tokens if self.output_tokens is not None else output_tokens,
            deltas=self.deltas,
            error=self.error or (None if self.first is not None else "no content was streamed"),
        )


def _http_error(response: httpx.Response) -> str:
    response.read()
    return f"HTTP {response.status_code}: {response.text[:300]}"


def anthropic_stream(client: httpx.Client, url: str, headers: dict[str, str], body: dict[str, Any]) -> StreamTimes:
    """POST a streaming Messages request; times content_block_delta events, reads usage."""
    times = StreamTimes(start=time.perf_counter())
    try:
        with client.stream("POST", url, headers=headers, json=body) as response:
            if response.status_code != 200:
                times.error = _http_error(response)
                return times
            for event, data in sse_events(response.iter_lines()):
                _anthropic_event(times, event, json.loads(data))
    except (httpx.HTTPError, ValueError) as exc:
        times.error = f"{type(exc).__name__}: {exc}"
    times.end = time.perf_counter()
    return times


def _anthropic_event(times: StreamTimes, event: str, payload: dict[str, Any]) -> None:
    kind = payload.get("type", event)
    if kind == "content_block_delta":
        delta = payload.get("delta", {})
        times.delta(delta.get("text") or delta.get("partial_json") or delta.get("thinking") or "")
    elif kind in ("message_start", "message_delta"):
        usage = (payload.get("message") or {}).get("usage") if kind == "message_start" else payload.get("usage")
        _read_anthropic_usage(times, usage or {})
    elif kind == "error":
        times.error = json.dumps(payload.get("error", payload))[:300]


def _read_anthropic_usage(times: StreamTimes, usage: dict[str, Any]) -> None:
    if usage.get("input_tokens") is not None:
        times.input_tokens = int(usage["input_tokens"])
    if usage.get("cache_read_input_tokens") is not None:
        times.cached_tokens = int(usage["cache_read_input_tokens"])
    if usage.get("output_tokens") is not None:
        times.output_tokens = int(usage["output_tokens"])


def openai_stream(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> StreamTimes:
    """POST a streaming OpenAI completions or chat completions request; times content chunks."""
    times = StreamTimes(start=time.perf_counter())
    try:
        with client.stream("POST", url, headers=headers or {}, json=body) as response:
            if response.status_code != 200:
                times.error = _http_error(response)
                return times
            for _event, data in sse_events(response.iter_lines()):
                if data.strip() == "[DONE]":
                    break
                _openai_chunk(times, json.loads(data))
    except (httpx.HTTPError, ValueError) as exc:
        times.error = f"{type(exc).__name__}: {exc}"
    times.end = time.perf_counter()
    return times


def _openai_chunk(times: StreamTimes, chunk: dict[str, Any]) -> None:
    if "error" in chunk:
        times.error = json.dumps(chunk["error"])[:300]
        return
    for choice in chunk.get("choices") or []:
        text = choice.get("text")
        if text is None:
            text = (choice.get("delta") or {}).get("content")
        if text:
            times.delta(text)
    usage = chunk.get("usage")
    if usage:
        times.input_tokens = usage.get("prompt_tokens", times.input_tokens)
        times.output_tokens = usage.get("completion_tokens", times.output_tokens)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached and times.input_tokens is not None:
            times.cached_tokens = int(cached)
            times.input_tokens -= int(cached)  # keep prompt_tokens = tokens actually prefilled
