"""The real Claude Code CLI: a conversation whose history holds an image (Read of a PNG) keeps working."""

from __future__ import annotations

import base64

import pytest

from pensieve_server.engine.scripted import ScriptedBackend
from tests.e2e.conftest import claude_env
from tests.e2e.test_claude_code import run_claude
from tests.serverutil import running_server

pytestmark = [pytest.mark.claude_code, pytest.mark.slow]

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def test_read_of_a_png_puts_an_image_in_the_history_and_the_session_goes_on(tmp_path):
    shot = tmp_path / "shot.png"
    shot.write_bytes(PNG)
    scripted = ScriptedBackend()
    scripted.enqueue(f'<tool_call>\n{{"name": "Read", "arguments": {{"file_path": "{shot}"}}}}\n</tool_call>')
    scripted.enqueue("It is a tiny picture.")
    with running_server({"scripted": scripted}) as server:
        env = {**claude_env(server, tmp_path / "home"), "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "4000"}  # 1 token a character
        done = run_claude(["--print", f"Look at {shot}", "--allowedTools=Read"], env, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "It is a tiny picture." in done.stdout
    followup = scripted.prompts[-1]
    response = followup.rsplit("<tool_response>\n", 1)[1].split("</tool_response>", 1)[0]
    assert "(image/png" in response and "omitted: the local model cannot see images" in response, response
