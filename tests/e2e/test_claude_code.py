"""The real Claude Code CLI against the real server: the product's reason to exist."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pensieve_server.engine.scripted import ScriptedBackend
from tests.e2e.conftest import MAX_OUTPUT_TOKENS, claude_binary, claude_env
from tests.serverutil import running_server

pytestmark = [pytest.mark.claude_code, pytest.mark.slow]


def run_claude(args: list[str], env: dict[str, str], cwd, timeout: int = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [claude_binary(), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def answered_by_the_model(done: subprocess.CompletedProcess) -> dict:
    """Claude Code's JSON result, checked to come from the real model through Pensieve.

    A 135M model may not end its turn within Claude Code's output cap; Claude Code then asks it to
    continue and finally reports the cap. That is the model's answer, judged by Claude Code, not a
    failure of the path, so both outcomes pass; anything else (an API error, a hang) fails.
    """
    result = json.loads(done.stdout)
    usage = result["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] > 2000, usage  # Claude Code's whole prompt
    assert usage["output_tokens"] > 0, usage
    if done.returncode != 0 or result["is_error"]:
        assert f"exceeded the {MAX_OUTPUT_TOKENS} output token maximum" in result["result"], done.stdout + done.stderr
    else:
        assert result["result"].strip(), result
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One HOME and project folder for the module's runs on the real model: Claude Code's prompt (which
    names the folder) is then the same for each, and only the first run pays its cold prefill."""
    folder = tmp_path_factory.mktemp("claude-workspace")
    (folder / "project").mkdir()
    return folder


def test_print_answers_from_the_embedded_model_and_second_turn_hits_the_prefix_cache(llamacpp_server, workspace):
    env = claude_env(llamacpp_server, workspace / "home")
    work = workspace / "project"
    first = answered_by_the_model(run_claude(["--print", "Say hello in 5 words", "--output-format", "json"], env, work))
    assert first["usage"]["input_tokens"] > 2000  # a cold start: nothing cached yet
    second = answered_by_the_model(run_claude(["--print", "Say hello in 5 words", "--output-format", "json"],
                                              env, work))
    assert second["usage"]["cache_read_input_tokens"] > 2000, second["usage"]


def test_stream_json_output_parses(llamacpp_server, workspace):
    env = claude_env(llamacpp_server, workspace / "home")
    done = run_claude(["--print", "Say hello in 5 words", "--output-format", "stream-json", "--verbose"],
                      env, workspace / "project")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines[0]["type"] == "system"
    assert lines[-1]["type"] == "result" and lines[-1]["subtype"] == "success"
    if done.returncode != 0:  # the model did not end its turn within the cap (see answered_by_the_model)
        assert f"exceeded the {MAX_OUTPUT_TOKENS} output token maximum" in lines[-1]["result"], done.stdout
    assistant = [line for line in lines if line["type"] == "assistant" and line["message"]["model"] != "<synthetic>"]
    assert assistant and assistant[0]["message"]["content"]  # the model's own blocks, not Claude Code's


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
