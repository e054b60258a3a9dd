"""Doctor's checks of the ``claude`` binary: on PATH with a version, and (``--claude``) a real ``claude --print``."""

from __future__ import annotations

import shutil
import subprocess

from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.report import OK, SKIP, WARN, Check


def claude_binary() -> str | None:
    return shutil.which("claude")


def check_claude_cli(ctx: Context) -> Check:
    binary = claude_binary()
    if binary is None:
        return Check("claude", WARN, "Claude Code (`claude`) is not on PATH",
                     "npm install -g @anthropic-ai/claude-code")
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("claude", WARN, f"{binary} --version failed: {exc}", "reinstall Claude Code")
    version = (out.stdout.strip() or out.stderr.strip()).splitlines()
    if out.returncode != 0 or not version:
        return Check("claude", WARN, f"{binary} --version exited with {out.returncode}", "reinstall Claude Code")
    return Check("claude", OK, f"{version[0]} at {binary}", data={"version": version[0], "path": binary})


def claude_run(ctx: Context) -> Check:
    from pensieve_cli.claude_env import env_for_settings
    from pensieve_cli.doctor import selftest

    binary = claude_binary()
    if binary is None:
        return Check("claude --print", WARN, "skipped: `claude` is not on PATH",
                     "npm install -g @anthropic-ai/claude-code")
    if ctx.health is None:
        return Check("claude --print", SKIP, "skipped: the server is not running")
    return selftest.run_claude(binary, env_for_settings(ctx.settings, ctx.settings.auth_token))
