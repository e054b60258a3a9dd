"""``pensieve claude-env``: print the environment Claude Code needs, for use without ``setup``.

``eval "$(pensieve claude-env --shell)" && claude`` runs Claude Code against Pensieve while leaving
every config file alone; only the token file is created when missing.
"""

from __future__ import annotations

import argparse
import sys

from pensieve_cli import ui
from pensieve_cli.claude_env import env_for_settings, format_lines
from pensieve_cli.context import settings_from_args
from pensieve_cli.errors import ExitStatus
from pensieve_server.auth_token import ensure_token


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "claude-env",
        help="print the environment variables Claude Code needs",
        description="Print the variables that point Claude Code at this Pensieve server.\n"
        "Changes no file (the token file is created on first use).",
        epilog="examples:\n  eval \"$(pensieve claude-env --shell)\" && claude\n  pensieve claude-env --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--shell", action="store_true", help="export KEY='VALUE' lines for eval in sh, bash or zsh")
    form.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--port", type=int, help="port of the server (default: the configured one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, {"port": "port"})
    token = settings.auth_token or ensure_token(settings.paths.token_file)
    env = env_for_settings(settings, token)
    if args.json:
        ui.print_json(env)
    else:
        sys.stdout.write(format_lines(env, shell=args.shell))
    return ExitStatus.OK
