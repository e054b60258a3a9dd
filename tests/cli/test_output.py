"""What people and scripts see: help for every command, no escape codes off a terminal or with NO_COLOR,
stable ``--json`` shapes, and ``-q`` that keeps quiet."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pensieve_cli import ui
from pensieve_cli.main import GETTING_STARTED, build_parser

REPO = Path(__file__).resolve().parents[2]
ESC = "\x1b["
NONE = type(None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path, isolated_home: Path) -> dict[str, str]:
    """A subprocess environment with its own PENSIEVE_HOME whose port nothing listens on."""
    pensieve_home = Path(os.environ["PENSIEVE_HOME"])
    (pensieve_home / "config").mkdir(parents=True)
    (pensieve_home / "config" / "config.toml").write_text(f"port = {free_port()}\n")
    return {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm"}


def pensieve(env: Mapping[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a person would, with stdout and stderr going to pipes (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "pensieve_cli.main", *argv], cwd=REPO, env=dict(env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


# -- help ------------------------------------------------------------------------------------------

def walk(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[tuple[str, str, Any]]:
    """``(command path, one-line help, parser)`` for every visible command and subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for pseudo in action._choices_actions:
                sub = action.choices[pseudo.dest]
                path = (*words, pseudo.dest)
                yield " ".join(path), pseudo.help or "", sub
                yield from walk(sub, path)


def test_every_command_has_a_one_line_summary_and_examples() -> None:
    commands = list(walk(build_parser()))
    assert len(commands) >= 15
    problems = []
    for path, summary, parser in commands:
        if not summary.strip() or "\n" in summary:
            problems.append(f"{path}: the summary in `pensieve --help` must be one line")
        if "examples:" not in (parser.epilog or ""):
            problems.append(f"{path}: no `examples:` in its epilog")
        elif f"pensieve {path}" not in parser.epilog:
            problems.append(f"{path}: its examples do not show `pensieve {path}`")
        assert parser.format_help()
    assert not problems, "\n".join(problems)


def test_examples_survive_formatting() -> None:
    """Examples are one per line in `--help` (argparse would re-wrap them without a raw formatter)."""
    for path, _, parser in walk(build_parser()):
        text = parser.format_help()
        examples = text.split("examples:\n", 1)[1]
        first = examples.splitlines()[0]
        assert first.startswith("  ") and "pensieve" in first, (path, first)


def test_no_arguments_prints_getting_started(env: dict[str, str]) -> None:
    proc = pensieve(env)
    assert proc.returncode == 0 and proc.stdout == GETTING_STARTED and proc.stderr == ""
    assert "pensieve setup" in proc.stdout and "pensieve start" in proc.stdout


def test_quiet_and_verbose_work_before_and_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["-q", "status"]).quiet and parser.parse_args(["status", "-q"]).quiet
    assert parser.parse_args(["config", "list", "--quiet"]).quiet
    assert parser.parse_args(["-v", "doctor"]).verbose and parser.parse_args(["doctor", "-v"]).verbose
    args = parser.parse_args(["status"])
    assert args.quiet is False and args.verbose is False
    assert parser.parse_args(["-q", "config", "list"]).quiet  # not reset by the subcommand's default


# -- colour ----------------------------------------------------------------------------------------

PLAIN_COMMANDS = [
    (),
    ("--help",),
    ("serve", "--help"),
    ("doctor", "--no-load"),
    ("doctor", "--no-load", "--json"),
    ("status",),
    ("status", "--json"),
    ("config", "list"),
    ("config", "path"),
    ("claude-env",),
    ("logs",),
    ("stop",),
    ("completions", "bash"),
    ("models", "list"),
    ("models", "info", "smollm2-135m"),
    ("no-such-command",),
]


@pytest.mark.parametrize("no_color", [False, True], ids=["piped", "piped+NO_COLOR"])
def test_no_escape_codes_off_a_terminal(env: dict[str, str], no_color: bool) -> None:
    if no_color:
        env = {**env, "NO_COLOR": "1"}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda argv: (argv, pensieve(env, *argv)), PLAIN_COMMANDS))
    for argv, proc in results:
        assert ESC not in proc.stdout and ESC not in proc.stderr, (argv, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, (argv, proc.stderr)
    status = dict(results)[("status",)]
    assert status.returncode == 3 and "not running" in status.stdout


def spawn(env: Mapping[str, str], *argv: str) -> str:
    """Run the CLI in a real pseudo-terminal; everything it wrote, escape codes included."""
    import pexpect

    child = pexpect.spawn(sys.executable, ["-m", "pensieve_cli.main", *argv], cwd=str(REPO), env=dict(env),
                          encoding="utf-8", timeout=60, dimensions=(40, 200))
    output = child.read()
    child.close()
    return output


def test_colour_on_a_terminal_unless_no_color_or_dumb(env: dict[str, str]) -> None:
    assert f"{ESC}31m" in spawn(env, "status")  # the ✗ is red on a terminal...
    assert ESC not in spawn({**env, "NO_COLOR": "1"}, "status")  # ...but never with NO_COLOR
    assert ESC not in spawn({**env, "TERM": "dumb"}, "status")
    assert ESC not in spawn({**env, "NO_COLOR": "1"}, "doctor", "--no-load")


class FakeStream:
    def __init__(self, tty: bool, encoding: str = "utf-8") -> None:
        self.tty, self.encoding = tty, encoding

    def isatty(self) -> bool:
        return self.tty


def test_colour_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    assert ui.color_enabled(FakeStream(tty=True))
    assert not ui.color_enabled(FakeStream(tty=False))
    assert ui.paint("x", "red", FakeStream(tty=False)) == "x"
    monkeypatch.setenv("NO_COLOR", "1")
    assert not ui.color_enabled(FakeStream(tty=True))
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: an empty value does not count
    assert ui.color_enabled(FakeStream(tty=True))
    monkeypatch.setenv("TERM", "dumb")
    assert not ui.color_enabled(FakeStream(tty=True))
    assert ui.symbols(FakeStream(tty=True, encoding="ascii")) == ui.ASCII_SYMBOLS


# -- --json shapes ---------------------------------------------------------------------------------

def conforms(data: Any, required: Mapping[str, Any], optional: Mapping[str, Any] | None = None) -> None:
    """``data`` is an object with every required key, no unknown key, each value of its type(s)."""
    optional = optional or {}
    assert isinstance(data, dict), data
    missing = set(required) - set(data)
    unknown = set(data) - set(required) - set(optional)
    assert not missing and not unknown, (f"missing {sorted(missing)}", f"unknown {sorted(unknown)}", data)
    for key, value in data.items():
        expected = required.get(key, optional.get(key))
        assert isinstance(value, expected) and not (isinstance(value, bool) and bool not in _types(expected)), \
            (key, value, expected)


def _types(expected: Any) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def json_of(env: Mapping[str, str], *argv: str, codes: tuple[int, ...] = (0,)) -> Any:
    proc = pensieve(env, *argv)
    assert proc.returncode in codes, (argv, proc.returncode, proc.stderr)
    assert proc.stdout.endswith("\n") and ESC not in proc.stdout
    return json.loads(proc.stdout)


STATUS_OPTIONAL = {"note": str, "started_at": (str, float, int), "version": (str, NONE), "log": str,
                   "uptime_s": (int, float, NONE), "model": (str, NONE), "engine": (str, NONE),
                   "device": (str, NONE), "requests": int, "tokens_per_s": (int, float),
                   "memory_rss_bytes": int}


def test_status_json(env: dict[str, str]) -> None:
    data = json_of(env, "status", "--json", codes=(3,))
    conforms(data, {"running": bool, "managed": bool, "url": str, "pid": (int, NONE)}, STATUS_OPTIONAL)
    assert data["running"] is False and data["url"].startswith("http://127.0.0.1:")


def test_doctor_json(env: dict[str, str]) -> None:
    data = json_of(env, "doctor", "--no-load", "--json", codes=(0, 4))
    conforms(data, {"ok": bool, "summary": dict, "checks": list})
    conforms(data["summary"], {"ok": int, "warn": int, "fail": int, "skip": int})
    assert sum(data["summary"].values()) == len(data["checks"]) > 5
    for check in data["checks"]:
        conforms(check, {"name": str, "status": str, "detail": str, "fix": str}, {"data": dict})
        assert check["status"] in ("ok", "warn", "fail", "skip")
    assert data["ok"] == (data["summary"]["fail"] == 0)
    names = [check["name"] for check in data["checks"]]
    assert "server" in names and len(names) == len(set(names))


def test_config_list_json(env: dict[str, str]) -> None:
    from pensieve_server.settings import OPTIONS

    data = json_of(env, "config", "list", "--json")
    assert list(data) == [option.name for option in OPTIONS]
    for key, entry in data.items():
        conforms(entry, {"value": (str, int, float, bool), "source": str})
        assert entry["source"] in ("default", "file", "env", "flag", "token file"), key
    assert data["port"]["source"] == "file" and isinstance(data["port"]["value"], int)


def test_claude_env_json(env: dict[str, str]) -> None:
    data = json_of(env, "claude-env", "--json")
    assert data and all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())
    assert data["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")


MODEL = {"name": str, "format": str, "path": str, "source": str, "context_length": int, "size_bytes": int,
         "architecture": str, "builtin": bool, "default": bool, "tiers": list, "engines": list,
         "description": str}


def test_models_json(env: dict[str, str]) -> None:
    listed = json_of(env, "models", "list", "--json")
    assert isinstance(listed, list) and listed
    for entry in listed:
        conforms(entry, MODEL)
        assert entry["format"] in ("gguf", "mlx")
        assert all(isinstance(t, str) for t in entry["tiers"] + entry["engines"])
    embedded = next(entry for entry in listed if entry["builtin"])
    assert embedded["name"] == "smollm2-135m" and embedded["default"] is True
    conforms(json_of(env, "models", "info", "smollm2-135m", "--json"), MODEL)
    mapping = json_of(env, "models", "map", "--json")
    assert [row["tier"] for row in mapping] == ["opus", "sonnet", "haiku"]
    for row in mapping:
        conforms(row, {"tier": str, "model": str, "mapped": bool, "source": str})


# -- -q ----------------------------------------------------------------------------------------------

def test_quiet_commands_print_only_what_was_asked(env: dict[str, str], tmp_path: Path) -> None:
    idle = {**env, "PENSIEVE_PORT": str(free_port())}  # no server there, whatever runs on 7777 here
    for argv in (("-q", "config", "set", "port", "8123"), ("config", "unset", "port", "-q"),
                 ("-q", "stop"), ("stop", "--quiet"), ("-q", "completions", "--write", str(tmp_path / "c"))):
        proc = pensieve(idle if "stop" in argv else env, *argv)
        assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", (argv, proc.stdout, proc.stderr)
    assert pensieve(env, "config", "get", "port", "-q").stdout == "7777\n"  # requested data still comes
    loud, quiet = pensieve(idle, "status"), pensieve(idle, "status", "-q")
    assert quiet.returncode == loud.returncode == 3 and len(quiet.stdout.splitlines()) == 1
    loud, quiet = pensieve(env, "models", "list"), pensieve(env, "-q", "models", "list")
    assert "smollm2-135m" in quiet.stdout and "Storage" in loud.stdout and "Storage" not in quiet.stdout


def test_errors_are_one_line_without_a_traceback(env: dict[str, str]) -> None:
    proc = pensieve(env, "logs")
    assert proc.returncode == 3 and proc.stderr.startswith("pensieve: no server log yet")
    assert "Traceback" not in proc.stderr
