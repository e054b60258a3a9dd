"""Parser and dispatch for ``pensieve``: one module per command, one line per error."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pensieve_cli.errors import CliError, ExitStatus
from pensieve_server import __version__

# Command modules in help order. Each has ``register(subparsers)`` that adds its parser(s) with
# ``set_defaults(func=...)``; ``func(args) -> int``.
COMMAND_MODULES = (
    "setup",
    "serve",
    "daemon",
    "doctor",
    "models",
    "config",
    "claude_env",
    "completions",
)

GETTING_STARTED = """\
Pensieve runs Claude Code against a model on your own machine.

Get started:
  pensieve setup          configure Claude Code for the local server
  pensieve start          run the server in the background (or `pensieve serve` in the foreground)
  claude                  use Claude Code as usual

Run `pensieve --help` for every command, `pensieve doctor` when something is wrong.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pensieve",
        description="Run Claude Code against a local model: private, offline, free.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 doctor found a problem, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"pensieve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more output; tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and requested data")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"pensieve_cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pensieve_cli.commands.{name}":
                continue  # not built yet: absent from help rather than a stub
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        sys.stdout.write(GETTING_STARTED)
        return ExitStatus.OK
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        if args.verbose or os.environ.get("PENSIEVE_TRACEBACK"):
            raise
        print(f"pensieve: {exc.message}", file=sys.stderr)
        return int(exc.status)
    except KeyboardInterrupt:
        print("pensieve: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user unless asked
        if args.verbose or os.environ.get("PENSIEVE_TRACEBACK"):
            raise
        print(f"pensieve: unexpected error: {type(exc).__name__}: {exc} (run with -v for details)", file=sys.stderr)
        return ExitStatus.ERROR


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
