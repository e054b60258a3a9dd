"""The real Claude Code CLI answering through Pensieve from a real llama.cpp upstream."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import claude_binary, claude_env
from tests.serverutil import RunningServer
from tests.upstream.conftest import Upstream, llamacpp_server, pensieve_in_front

pytestmark = [pytest.mark.slow, pytest.mark.claude_code]


def claude_print(server: RunningServer, tmp_path: Path, *args: str, **env: str) -> dict:
    work = tmp_path / "project"
    work.mkdir()
    done = subprocess.run(
        [claude_binary(), "--print", "Say hello in 5 words", "--output-format", "json", *args],
        env={**claude_env(server, tmp_path / "home"), **env}, cwd=work, capture_output=True, text=True,
        timeout=240, stdin=subprocess.DEVNULL,
    )
    try:
        return json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"claude exited with {done.returncode}: {done.stderr}{done.stdout}")


def test_claude_print_answers_through_the_upstream(llamacpp_upstream: Upstream, tmp_path: Path) -> None:
    # Without tools Claude Code's prompt (≈1.7k tokens) fits the 4096-token upstream as it is.
    with pensieve_in_front(llamacpp_upstream.url, upstream_api_key=llamacpp_upstream.api_key,
                           upstream_context_length=4096, temperature=0.0) as server:
        result = claude_print(server, tmp_path, "--tools", "")
    assert result["is_error"] is False, result
    assert result["result"].strip() and result["usage"]["output_tokens"] > 0, result


def test_claude_codes_whole_request_is_fitted_for_a_small_upstream(tmp_path: Path) -> None:
    # With its tools Claude Code sends ≈22k tokens. Fitted by the estimate (compact tool descriptions, no
    # schema annotations) they need ≈6.5k, so this upstream gets SmolLM2's full 8192-token context. The
    # 135M model may ramble on that prompt; 64 output tokens keep it short, and whether Claude Code then
    # calls the answer complete is the model's business: no request may fail.
    with llamacpp_server(tmp_path, n_ctx=8192) as upstream, \
            pensieve_in_front(upstream.url, upstream_api_key=upstream.api_key, upstream_context_length=8192,
                              temperature=0.0) as server:
        result = claude_print(server, tmp_path, CLAUDE_CODE_MAX_OUTPUT_TOKENS="64")
        with server.client() as http:
            metrics = http.get("/metrics").text
    assert result["api_error_status"] is None, result
    assert result["usage"]["output_tokens"] > 0, result
    assert result["terminal_reason"] != "prompt_too_long", result
    assert "exceed context window" not in upstream.log.read_text()
    assert 'route="/v1/messages",status="200"' in metrics
