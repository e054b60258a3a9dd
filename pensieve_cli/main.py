"""Parser and dispatch for ``pensieve``: one module per command, one line per error."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
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
    "cache",
    "completions",
)

GETTING_STARTED = """\
Pensieve runs Claude Code against a model on your own machine.

Get started:
  pensieve setup          configure Claude Code for the local server
  pensieve start          run the server in the background (or `pensieve serve` in the foreground)
  claude                  use Claude Code as usual

Run `pensieve --help` for every command, `pensieve doctor` when something is wrong.
TAB completion for bash, zsh and fish: `pensieve completions --help`.
"""

ROOT_EPILOG = """\
examples:
  pensieve setup && pensieve start && claude
  pensieve status
  pensieve doctor
  pensieve models list
  pensieve <command> --help

-q and -v work before or after the command. Colour only on a terminal, never with NO_COLOR set.
Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 doctor found a problem, 130 interrupted."""

# (flags, help) of the options every command takes, before or after its name.
GLOBAL_FLAGS = (
    (("-v", "--verbose"), "more output; tracebacks on errors"),
    (("-q", "--quiet"), "only errors and requested data"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pensieve",
        description="Run Claude Code against a local model: private, offline, free.",
        epilog=ROOT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pensieve {__version__}")
    for flags, help_text in GLOBAL_FLAGS:
        parser.add_argument(*flags, action="store_true", help=help_text)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        # Every command is part of the product: one that fails to import must fail loudly, not vanish from help.
        importlib.import_module(f"pensieve_cli.commands.{name}").register(subparsers)
    add_global_flags(subparsers)
    return parser


def add_global_flags(subparsers: argparse._SubParsersAction) -> None:
    """Accept -q/-v after the command too (`pensieve status -q`), as people type them.

    The default is SUPPRESS so that a flag given before the command is not reset by the subparser.
    """
    for sub in subparsers.choices.values():
        for flags, help_text in GLOBAL_FLAGS:
            # A command that uses one of these flags for something else keeps its meaning.
            with contextlib.suppress(argparse.ArgumentError):
                sub.add_argument(*flags, action="store_true", default=argparse.SUPPRESS, help=help_text)
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                add_global_flags(action)


def exit_statuses() -> tuple[tuple[type[BaseException], ExitStatus], ...]:
    """The one table from an error a command lets through to its exit status; the first match wins.

    Commands raise their library's error as it is; main prints its message as one plain line. The
    types are imported here, on the error path only, so that `pensieve --help` stays quick.
    """
    from pensieve_cli.claude_config import ConfigFileError, NothingToUndo
    from pensieve_server.bind_policy import BindRefused
    from pensieve_server.engine.base import EngineError
    from pensieve_server.models.hub import HubNotFound
    from pensieve_server.models.store import ModelError, ModelNotFound
    from pensieve_server.runner import PortInUse
    from pensieve_server.settings import ConfigError

    return (
        (NothingToUndo, ExitStatus.NOT_FOUND),  # `setup --undo` with no journal
        (ConfigFileError, ExitStatus.ERROR),  # ~/.claude.json or settings.json unreadable or unwritable
        (ConfigError, ExitStatus.USAGE),  # a bad setting: flag, env, config.toml or `config set`
        (BindRefused, ExitStatus.USAGE),  # an exposed bind without a token
        (PortInUse, ExitStatus.ERROR),
        (EngineError, ExitStatus.NOT_FOUND),  # the default model cannot be found or loaded
        (ModelNotFound, ExitStatus.NOT_FOUND),
        (HubNotFound, ExitStatus.NOT_FOUND),  # no such repo, revision or file on the Hub
        (ModelError, ExitStatus.ERROR),
    )


def exit_status(exc: BaseException) -> ExitStatus | None:
    """``exc``'s exit status, or None for an error no command expects (a bug: main says so)."""
    if isinstance(exc, CliError):
        return exc.status
    return next((status for kind, status in exit_statuses() if isinstance(exc, kind)), None)


def main(argv: Sequence[str] | None = None) -> int:
    from pensieve_server.engine.load_order import load_llama_cpp_first, loads_models

    if loads_models(sys.argv[1:] if argv is None else argv):
        load_llama_cpp_first()  # before the parser's imports load numpy: a CUDA build crashed the other way
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        sys.stdout.write(GETTING_STARTED)
        return ExitStatus.OK
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pensieve: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # `pensieve config list --json | head`: the reader left; not an error worth a message.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown from re-raising
        return ExitStatus.OK
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user unless asked
        if args.verbose or os.environ.get("PENSIEVE_TRACEBACK"):
            raise
        status = exit_status(exc)
        if status is None:
            print(f"pensieve: unexpected error: {type(exc).__name__}: {exc} (run with -v for details)",
                  file=sys.stderr)
            return ExitStatus.ERROR
        print(f"pensieve: {exc}", file=sys.stderr)
        return int(status)


def entry() -> None:
    exit_process(main())


def exit_process(status: int) -> None:
    """Exit with ``status``; skips interpreter teardown once MLX is loaded.

    MLX 0.32's CPU streams can abort the process while it tears down ("terminate called without
    an active exception", exit 134) after a model ran on a worker thread; the server has already
    stopped, closed its models and written its logs by then, so nothing is lost by leaving at once.
    """
    if "mlx.core" not in sys.modules:
        sys.exit(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
