"""End-to-end checks of a running server over HTTP, made the way Claude Code talks to it.

Each step returns a :class:`~pensieve_cli.doctor.report.Check`, so ``doctor`` prints them and other tools
(benchmarks, CI) can reuse them. :func:`run_claude` drives the real ``claude --print``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from pensieve_cli.doctor.report import FAIL, OK, SKIP, WARN, Check

PROMPT = "Say hello in 5 words"
MAPPED_NAME = "claude-sonnet-4-5"  # what Claude Code sends by default (pensieve_cli.claude_env.MAIN_MODEL)
ANTHROPIC_VERSION = "2023-06-01"
CLAUDE_TIMEOUT_S = 600


def _body(model: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": PROMPT}]}


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return f"{response.status_code} {error.get('type')}: {error.get('message')}"
    except (ValueError, AttributeError):
        return f"{response.status_code} {response.text[:200]!r}"


def check_health(client: httpx.Client) -> Check:
    response = client.get("/health")
    data = response.json() if response.status_code == 200 else {}
    if data.get("status") != "ok":
        return Check("self-test /health", FAIL, f"unexpected answer: {_error_text(response)}",
                     "see `pensieve logs`")
    return Check("self-test /health", OK, f"{data.get('model')} on {data.get('engine')} ({data.get('device')})",
                 data={"model": data.get("model"), "engine": data.get("engine")})


def check_auth_required(client: httpx.Client, model: str) -> Check:
    response = client.post("/v1/messages", json=_body(model, 1), headers={"x-api-key": "", "authorization": ""})
    error_type = response.json().get("error", {}).get("type") if response.status_code == 401 else None
    if response.status_code == 401 and error_type == "authentication_error":
        return Check("self-test auth", OK, "a request without the token gets 401")
    return Check("self-test auth", FAIL, f"a request without the token got {response.status_code}, not 401",
                 "the server must check the token; set auth_token or delete the token file and restart")


def check_message(client: httpx.Client, model: str) -> Check:
    started = time.perf_counter()
    response = client.post("/v1/messages", json=_body(model, 16))
    elapsed_ms = round((time.perf_counter() - started) * 1000)
    if response.status_code != 200:
        return Check("self-test message", FAIL, _error_text(response), "see `pensieve logs`")
    data = response.json()
    text = "".join(b.get("text", "") for b in data.get("content", []) if b.get("type") == "text")
    if data.get("type") != "message" or data.get("role") != "assistant":
        return Check("self-test message", FAIL, f"not a Message: {json.dumps(data)[:200]}", "see `pensieve logs`")
    usage = data.get("usage", {})
    return Check("self-test message", OK,
                 f"{text.strip()[:50]!r} ({usage.get('output_tokens')} tokens, {elapsed_ms} ms)",
                 data={"duration_ms": elapsed_ms, "usage": usage})


def check_stream(client: httpx.Client, model: str) -> Check:
    """A streamed message: event order, time to first token and decode speed."""
    started = time.perf_counter()
    first_token_at = done_at = None
    events: list[str] = []
    output_tokens = 0
    with client.stream("POST", "/v1/messages", json=_body(model, 32, stream=True)) as response:
        if response.status_code != 200:
            response.read()
            return Check("self-test stream", FAIL, _error_text(response), "see `pensieve logs`")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            kind = event.get("type", "")
            events.append(kind)
            if kind == "content_block_delta" and first_token_at is None:
                first_token_at = time.perf_counter()
            elif kind == "message_delta":
                output_tokens = event.get("usage", {}).get("output_tokens", 0)
            elif kind == "error":
                return Check("self-test stream", FAIL, f"error event: {event.get('error')}", "see `pensieve logs`")
            elif kind == "message_stop":
                done_at = time.perf_counter()
    real = [e for e in events if e != "ping"]
    if not real or real[0] != "message_start" or real[-1] != "message_stop" or done_at is None:
        return Check("self-test stream", FAIL, f"unexpected event order: {', '.join(real[:8])}",
                     "see `pensieve logs`")
    ttft_ms = round(((first_token_at or done_at) - started) * 1000)
    decode_s = done_at - (first_token_at or done_at)
    tps = round((output_tokens - 1) / decode_s, 1) if output_tokens > 1 and decode_s > 0 else 0.0
    return Check("self-test stream", OK, f"first token after {ttft_ms} ms, {tps:g} tokens/s ({output_tokens} tokens)",
                 data={"ttft_ms": ttft_ms, "tokens_per_s": tps, "output_tokens": output_tokens})


def check_count_tokens(client: httpx.Client, model: str) -> Check:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    response = client.post("/v1/messages/count_tokens", json=body)
    count = response.json().get("input_tokens") if response.status_code == 200 else None
    if not isinstance(count, int) or count <= 0:
        return Check("self-test count_tokens", FAIL, _error_text(response), "see `pensieve logs`")
    return Check("self-test count_tokens", OK, f"{count} input tokens", data={"input_tokens": count})


def check_mapping(client: httpx.Client, expected: str) -> Check:
    """``claude-sonnet-4-5`` (what Claude Code asks for) must be answered by the configured local model."""
    response = client.post("/v1/messages", json=_body(MAPPED_NAME, 1))
    if response.status_code != 200:
        return Check("self-test model names", FAIL, f"{MAPPED_NAME}: {_error_text(response)}",
                     "set a local model for the sonnet tier: `pensieve setup`")
    served = response.headers.get("pensieve-model", "")
    if served and served != expected:
        return Check("self-test model names", WARN, f"{MAPPED_NAME} is answered by {served}, config says {expected}",
                     "restart the server to use the current config: `pensieve restart`")
    return Check("self-test model names", OK, f"{MAPPED_NAME} → {served or expected}")


def run_selftest(base_url: str, token: str, model: str, mapped_to: str | None = None,
                 timeout: float = 300.0) -> list[Check]:
    """Every step against ``base_url``; after a failed ``/health`` the others are skipped."""
    headers = {"x-api-key": token, "anthropic-version": ANTHROPIC_VERSION}
    steps: list[tuple[str, Callable[[httpx.Client], Check]]] = [
        ("self-test auth", lambda c: check_auth_required(c, model)),
        ("self-test message", lambda c: check_message(c, model)),
        ("self-test stream", lambda c: check_stream(c, model)),
        ("self-test count_tokens", lambda c: check_count_tokens(c, model)),
        ("self-test model names", lambda c: check_mapping(c, mapped_to or model)),
    ]
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as client:
        first = _guarded("self-test /health", check_health, client)
        if first.status != OK:
            return [first] + [Check(name, SKIP, "skipped: /health failed") for name, _ in steps]
        return [first] + [_guarded(name, step, client) for name, step in steps]


def _guarded(name: str, step: Callable[[httpx.Client], Check], client: httpx.Client) -> Check:
    try:
        return step(client)
    except httpx.HTTPError as exc:
        return Check(name, FAIL, f"{type(exc).__name__}: {exc}", "see `pensieve logs`")
    except (ValueError, AttributeError) as exc:  # a body that is not the JSON it should be
        return Check(name, FAIL, f"unexpected response: {exc}", "see `pensieve logs`")


def run_claude(binary: str, env: Mapping[str, str], timeout: float = CLAUDE_TIMEOUT_S) -> Check:
    """The real ``claude --print`` with Pensieve's environment, in an empty folder."""
    name = "claude --print"
    command = [binary, "--print", PROMPT, "--output-format", "json"]
    with tempfile.TemporaryDirectory(prefix="pensieve-doctor-") as folder:
        try:
            proc = subprocess.run(command, env={**os.environ, **env}, cwd=folder, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Check(name, FAIL, f"no answer within {timeout:.0f} s",
                         "check `pensieve logs`; a large model may need a smaller context (--context-length)")
        except OSError as exc:
            return Check(name, FAIL, f"cannot run {binary}: {exc.strerror}", "reinstall Claude Code")
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return Check(name, FAIL, f"exit status {proc.returncode}: {detail[-1][:200] if detail else 'no output'}",
                     "run it yourself to see: claude --print 'Say hello'")
    text = str(result.get("result", "")).strip()
    if proc.returncode != 0 or result.get("is_error"):
        return Check(name, FAIL, f"Claude Code reported an error: {text[:200]}", "see `pensieve logs`")
    data = {key: result.get(key) for key in ("ttft_ms", "duration_ms", "num_turns") if key in result}
    timing = f"ttft {data['ttft_ms']} ms, " if data.get("ttft_ms") is not None else ""
    return Check(name, OK, f"{text[:60]!r} ({timing}{data.get('duration_ms')} ms in all)", data=data)
