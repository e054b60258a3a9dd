"""Talking to the person: TTY and NO_COLOR detection, status symbols, JSON output, diffs and prompts.

Colour and Unicode are used only where they will render: colour on a terminal without ``NO_COLOR``
(https://no-color.org) or ``TERM=dumb``; ✓ ✗ ! only where the stream's encoding can show them.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

_COLORS = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}


@dataclass(frozen=True)
class Symbols:
    ok: str
    fail: str
    warn: str


UNICODE_SYMBOLS = Symbols("✓", "✗", "!")
ASCII_SYMBOLS = Symbols("+", "x", "!")


def is_tty(stream: TextIO | None = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def interactive() -> bool:
    """Whether questions can be asked: both stdin and stdout are terminals."""
    return is_tty(sys.stdin) and is_tty(sys.stdout)


def color_enabled(stream: TextIO | None = None) -> bool:
    if os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
        return False
    return is_tty(stream)


def symbols(stream: TextIO | None = None) -> Symbols:
    stream = sys.stdout if stream is None else stream
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ASCII_SYMBOLS
    return UNICODE_SYMBOLS


def paint(text: str, color: str, stream: TextIO | None = None) -> str:
    if not color_enabled(stream):
        return text
    return f"\x1b[{_COLORS[color]}m{text}\x1b[0m"


def _status(symbol: str, color: str, message: str, stream: TextIO | None) -> None:
    stream = sys.stdout if stream is None else stream
    print(f"{paint(symbol, color, stream)} {message}", file=stream)


def success(message: str, stream: TextIO | None = None) -> None:
    _status(symbols(stream).ok, "green", message, stream)


def failure(message: str, stream: TextIO | None = None) -> None:
    _status(symbols(stream).fail, "red", message, stream)


def warning(message: str, stream: TextIO | None = None) -> None:
    _status(symbols(stream).warn, "yellow", message, stream)


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """Machine-readable output: stable key order as given, no colour, one trailing newline."""
    stream = sys.stdout if stream is None else stream
    stream.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def diff_lines(label: str, before: str | None, after: str | None, redact: Iterable[str] = ()) -> list[str]:
    """A unified diff of one file (``None`` = the file does not exist), with secrets replaced."""
    old, new = before or "", after or ""
    for secret in redact:
        if secret:
            old, new = old.replace(secret, "<token>"), new.replace(secret, "<token>")
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(),
        fromfile="/dev/null" if before is None else f"{label} (now)",
        tofile="/dev/null" if after is None else f"{label} (after)",
        lineterm="",
    )
    return list(lines)


def print_diff(label: str, before: str | None, after: str | None, redact: Iterable[str] = (),
               stream: TextIO | None = None) -> None:
    stream = sys.stdout if stream is None else stream
    for line in diff_lines(label, before, after, redact):
        if line.startswith(("+++", "---")):
            line = paint(line, "bold", stream)
        elif line.startswith("+"):
            line = paint(line, "green", stream)
        elif line.startswith("-"):
            line = paint(line, "red", stream)
        elif line.startswith("@@"):
            line = paint(line, "cyan", stream)
        print(line, file=stream)


def answered(value: Any) -> Any:
    """questionary returns None on Ctrl-C; make that the interrupt it is."""
    if value is None:
        raise KeyboardInterrupt
    return value


def ask_select(message: str, choices: Sequence[tuple[str, str]], default: str | None = None,
               descriptions: Mapping[str, str] | None = None) -> str:
    """One choice from ``(value, title)`` pairs, with the arrow keys; a description under the list."""
    import questionary

    notes = descriptions or {}
    options = [questionary.Choice(title, value=value, description=notes.get(value)) for value, title in choices]
    return answered(questionary.select(message, choices=options, default=default).ask())


def ask_text(message: str, default: str = "", validate: Callable[[str], bool | str] | None = None) -> str:
    import questionary

    return answered(questionary.text(message, default=default, validate=validate).ask())


def ask_confirm(message: str, default: bool = True) -> bool:
    import questionary

    return bool(answered(questionary.confirm(message, default=default).ask()))
