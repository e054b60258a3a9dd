"""``pensieve completions``: print or write the shell completion script for bash, zsh or fish.

The script is generated from this installed version's parser, so it always matches the CLI in hand
(the committed copies in ``completions/`` are for packagers).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pensieve_cli.errors import CliError, ExitStatus

INSTALL_HINTS = {
    "bash": 'add to ~/.bashrc:  eval "$(pensieve completions bash)"',
    "zsh": "pensieve completions zsh --write ~/.zfunc, then in ~/.zshrc before compinit: fpath=(~/.zfunc $fpath)",
    "fish": "pensieve completions fish --write ~/.config/fish/completions",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from pensieve_cli.completions import SHELLS

    parser = subparsers.add_parser(
        "completions",
        help="print the shell completion script for bash, zsh or fish",
        description="Print the TAB-completion script for your shell: commands, options, choices and the\n"
        "names of installed models. Without a shell name: the one in $SHELL (with --write: all three).",
        epilog="examples:\n"
        '  eval "$(pensieve completions bash)"                         # in ~/.bashrc\n'
        "  pensieve completions zsh --write ~/.zfunc                   # then fpath=(~/.zfunc $fpath)\n"
        "  pensieve completions fish --write ~/.config/fish/completions\n"
        "  pensieve completions --write ./completions                  # all three",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", nargs="?", choices=SHELLS, help="bash, zsh or fish (default: from $SHELL)")
    parser.add_argument("--write", metavar="DIR", type=Path,
                        help="write the script into DIR under the name the shell looks for, instead of printing it")
    parser.set_defaults(func=run)


def shell_from_env() -> str | None:
    """The login shell's name, if it is one we have a script for."""
    from pensieve_cli.completions import SHELLS

    name = Path(os.environ.get("SHELL", "")).name
    return name if name in SHELLS else None


def run(args: argparse.Namespace) -> int:
    from pensieve_cli import completions

    shell = args.shell
    if args.write is not None:
        shells = (shell,) if shell else completions.SHELLS
        try:
            written = completions.write(args.write.expanduser(), shells)
        except OSError as exc:
            raise CliError(f"cannot write to {args.write}: {exc.strerror or exc}") from None
        if not args.quiet:
            for path in written:
                print(f"wrote {path}")
            if len(shells) == 1:
                print(f"To enable it: {INSTALL_HINTS[shells[0]]}")
        return ExitStatus.OK
    shell = shell or shell_from_env()
    if shell is None:
        raise CliError("name the shell: pensieve completions bash|zsh|fish", ExitStatus.USAGE)
    sys.stdout.write(completions.generate(shell))
    return ExitStatus.OK
