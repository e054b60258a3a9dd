"""The real Claude Code CLI against the real server: the product's reason to exist."""

from __future__ import annotations

import json
import subprocess

import pytest

from pensieve_server.engine.scripted import ScriptedBackend
from tests.e2e.conftest import claude_binary, claude_env
from tests.serverutil import running_server

pytestmark = pytest.mark.claude_code


def run_claude(args: list[str], env: dict[str, str], cwd, timeout: int = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [claude_binary(), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_print_answers_from_the_embedded_model_and_second_turn_hits_the_prefix_cache(llamacpp_server, tmp_path):
    env = claude_env(llamacpp_server, tmp_path / "home")
    work = tmp_path / "project"
    work.mkdir()
    first = run_claude(["--print", "Say hello in 5 words", "--output-format", "json"], env, work)
    assert first.returncode == 0, first.stderr + first.stdout
    result = json.loads(first.stdout)
    assert result["is_error"] is False, result
    assert result["result"].strip(), result
    second = run_claude(["--print", "Say hello in 5 words", "--output-format", "json"], env, work)
    assert second.returncode == 0, second.stderr + second.stdout
    usage = json.loads(second.stdout)["usage"]
    assert usage["cache_read_input_tokens"] > 0, usage


def test_stream_json_output_parses(llamacpp_server, tmp_path):
    env = claude_env(llamacpp_server, tmp_path / "home")
    done = run_claude(["--print", "Say hello in 5 words", "--output-format", "stream-json", "--verbose"],
                      env, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines[0]["type"] == "system"
    assert lines[-1]["type"] == "result"
    assert lines[-1]["subtype"] == "success"
    assistant = [line for line in lines if line["type"] == "assistant"]
    assert assistant and assistant[0]["message"]["content"]


def test_bash_tool_round_trip_reaches_the_server(tmp_path):
    scripted = ScriptedBackend()
    scripted.enqueue(
        '<tool_call>\n{"name": "Bash", "arguments": {"command": "echo pensieve-ok", '
        '"description": "Print a marker"}}\n</tool_call>'
    )
    scripted.enqueue("The command printed pensieve-ok.")
    with running_server({"scripted": scripted}) as server:
        env = claude_env(server, tmp_path / "home")
        done = run_claude(["--print", "Run echo pensieve-ok", "--allowedTools=Bash"], env, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "The command printed pensieve-ok." in done.stdout
    assert len(scripted.prompts) >= 2
    followup = scripted.prompts[-1]
    assert "<tool_response>" in followup
    assert "pensieve-ok" in followup.split("<tool_response>", 1)[1]
