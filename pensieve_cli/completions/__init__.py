"""Shell completion scripts for bash, zsh and fish, generated from the argparse parser.

Generating them from ``pensieve_cli.main.build_parser()`` means a new command, option or choice is
completed as soon as it exists: nothing is maintained by hand. The committed copies in
``completions/`` are regenerated with ``python -m pensieve_cli.completions --write completions/``
(a test fails when they are stale).

Model names are completed at TAB time, without starting Python (which would make TAB feel slow):
the script lists ``$PENSIEVE_HOME/data/models/*/manifest.json`` (or the platform's data folder),
plus the embedded model. If ``pensieve models list`` has a hidden ``--names`` flag when the
scripts are generated, the script asks it first and falls back to the folder listing.

By concern: :mod:`.spec` walks the parser into a :class:`~.spec.Spec`; :mod:`.shared` holds what the
generators share; :mod:`.bash`, :mod:`.zsh` and :mod:`.fish` write one script each; this module
chooses between them, writes the files and checks the committed copies.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pensieve_cli.completions.bash import bash
from pensieve_cli.completions.fish import fish
from pensieve_cli.completions.spec import FILENAMES, REGENERATE, SHELLS, Spec, Value, build_spec, describe
from pensieve_cli.completions.zsh import zsh

__all__ = ["FILENAMES", "REGENERATE", "SHELLS", "Spec", "Value", "build_spec", "describe", "generate", "main",
           "stale", "write"]

# -- entry points ------------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[Spec], str]] = {"bash": bash, "zsh": zsh, "fish": fish}


def generate(shell: str, spec: Spec | None = None) -> str:
    """The completion script for ``shell`` ("bash", "zsh" or "fish") as text."""
    if shell not in GENERATORS:
        raise ValueError(f"unknown shell {shell!r}: choose one of {', '.join(SHELLS)}")
    return GENERATORS[shell](spec or build_spec())


def write(folder: Path, shells: Sequence[str] = SHELLS, spec: Spec | None = None) -> list[Path]:
    """Write each shell's script into ``folder`` (created if needed); returns the files written."""
    spec = spec or build_spec()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for shell in shells:
        target = folder / FILENAMES[shell]
        target.write_text(generate(shell, spec), encoding="utf-8")
        written.append(target)
    return written


def stale(folder: Path, spec: Spec | None = None) -> list[str]:
    """The scripts in ``folder`` that differ from a fresh generation (missing ones included)."""
    spec = spec or build_spec()
    out = []
    for shell in SHELLS:
        target = folder / FILENAMES[shell]
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        if current != generate(shell, spec):
            out.append(str(target))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pensieve_cli.completions",
                                     description="Generate pensieve's shell completion scripts.")
    parser.add_argument("shell", nargs="?", choices=SHELLS, help="print this shell's script")
    parser.add_argument("--write", metavar="DIR", type=Path, help="write every script into DIR")
    parser.add_argument("--check", metavar="DIR", type=Path,
                        help="exit 1 if the scripts in DIR are not what would be generated")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(args.check)
        for path in outdated:
            print(f"{path} is out of date; run {REGENERATE}", file=sys.stderr)
        return 1 if outdated else 0
    if args.write:
        for path in write(args.write, (args.shell,) if args.shell else SHELLS):
            print(path)
        return 0
    if not args.shell:
        parser.error("name a shell or pass --write DIR")
    sys.stdout.write(generate(args.shell))
    return 0
