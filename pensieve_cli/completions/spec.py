"""The command spec every completion script is generated from: argparse's parser walked into plain data.

Commands, their options and positionals, and what each value is (fixed words, installed model names,
a path, or anything), with the values a setting takes for ``config set KEY <TAB>``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SHELLS = ("bash", "zsh", "fish")
FILENAMES = {"bash": "pensieve.bash", "zsh": "_pensieve", "fish": "pensieve.fish"}
REGENERATE = "python -m pensieve_cli.completions --write completions/"
PROG = "pensieve"

# What a value is, for completing it: fixed words, installed model names, a path, or anything (no help).
# KEYED: depends on the positional before it (`config set engine <TAB>` offers the engines).
WORDS, MODELS, FILE, DIR, ANY, KEYED = "words", "models", "file", "dir", "any", "keyed"
SAFE_WORD = re.compile(r"^[A-Za-z0-9._:/@+,=-]+$")  # needs no quoting in any of the three shells


@dataclass(frozen=True)
class Value:
    kind: str = ANY
    words: tuple[str, ...] = ()  # WORDS: the choices; MODELS: offered besides the installed models
    keyed: tuple[tuple[tuple[str, ...], Value], ...] = ()  # KEYED: (previous words, their value's Value)


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    value: Value | None  # None: a flag that takes no value


@dataclass(frozen=True)
class Positional:
    name: str
    help: str
    value: Value
    repeats: bool  # nargs * or +: every later word is one too


@dataclass
class Command:
    words: tuple[str, ...]  # () for ``pensieve`` itself
    help: str
    options: list[Option] = field(default_factory=list)
    positionals: list[Positional] = field(default_factory=list)
    subcommands: list[Command] = field(default_factory=list)

    @property
    def path(self) -> str:
        return " ".join(self.words)

    def walk(self) -> Iterable[Command]:
        yield self
        for sub in self.subcommands:
            yield from sub.walk()


@dataclass(frozen=True)
class Spec:
    """Everything the scripts need: the command tree and how to list installed models."""

    root: Command
    embedded_model: str
    names_command: bool  # `pensieve models list --names` exists


# -- reading the parser ------------------------------------------------------------------------------

def _help(action: argparse.Action | None) -> str:
    """One line of help: argparse's %(default)s filled in, only the first sentence-ish line kept."""
    text = getattr(action, "help", None) or ""
    if "%" in text and action is not None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % {**vars(action), "prog": PROG}
    return " ".join(text.split())


def _catalog_aliases() -> tuple[str, ...]:
    from pensieve_server.models import catalog

    return tuple(entry.alias for entry in catalog.CATALOG if not entry.embedded)


def setting_values() -> Value:
    """``config set KEY <TAB>``: each setting's choices, models for the model settings, true/false."""
    from pensieve_server.settings import OPTIONS

    groups: dict[Value, list[str]] = {}
    for option in OPTIONS:
        if option.choices:
            value = Value(WORDS, tuple(option.choices))
        elif option.name == "default_model" or option.name.startswith("tiers."):
            value = Value(MODELS)
        elif option.type is bool:
            value = Value(WORDS, ("true", "false"))
        else:
            continue
        groups.setdefault(value, []).append(option.name)
    return Value(KEYED, keyed=tuple((tuple(names), value) for value, names in groups.items()))


def value_of(action: argparse.Action, words: tuple[str, ...]) -> Value:
    """How to complete this action's value; a ``completer`` attribute ("models", "file", "dir") wins."""
    hint = getattr(action, "completer", None)
    if hint in (MODELS, FILE, DIR):
        return Value(hint)
    if action.choices is not None and not isinstance(action.choices, dict):
        return Value(WORDS, tuple(str(choice) for choice in action.choices if SAFE_WORD.match(str(choice))))
    dest = action.dest or ""
    metavar = str(action.metavar or "").upper()
    positional = not action.option_strings
    if words[-1:] == ("setup",) and dest == "model":
        return Value(MODELS, _catalog_aliases())  # setup downloads a catalogue model too
    if words == ("config", "set") and dest == "value":
        return setting_values()
    if words[-1:] == ("pull",) and positional:
        return Value(WORDS, _catalog_aliases())
    if dest in ("model", "default_model") or (words[:1] == ("models",) and positional and dest == "name"):
        return Value(MODELS)
    if metavar in ("DIR", "DIRECTORY") or dest.endswith("_dir"):
        return Value(DIR)
    if metavar in ("PATH", "FILE") or dest in ("path", "file") or action.type is Path:
        return Value(FILE)
    return Value(ANY)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def describe(parser: argparse.ArgumentParser, words: tuple[str, ...] = (), summary: str = "") -> Command:
    """The command tree under ``parser``; hidden (``help=SUPPRESS``) commands and options are left out."""
    command = Command(words, summary or " ".join((parser.description or "").split()))
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            value = None if action.nargs == 0 else value_of(action, words)
            command.options.append(Option(tuple(action.option_strings), _help(action), value))
        else:
            command.positionals.append(Positional(action.dest, _help(action), value_of(action, words),
                                                  action.nargs in ("*", "+", argparse.REMAINDER)))
    subparsers = _subparsers(parser)
    if subparsers is not None:
        for pseudo in subparsers._choices_actions:  # only the visible ones, in help order
            name = pseudo.dest
            command.subcommands.append(describe(subparsers.choices[name], (*words, name), _help(pseudo)))
    return command


def build_spec(parser: argparse.ArgumentParser | None = None) -> Spec:
    from pensieve_server.models.embedded import EMBEDDED_NAME

    if parser is None:
        from pensieve_cli.main import build_parser

        parser = build_parser()
    models_list = find_parser(parser, ("models", "list"))
    names = models_list is not None and "--names" in models_list._option_string_actions
    return Spec(describe(parser), EMBEDDED_NAME, names)


def find_parser(parser: argparse.ArgumentParser, words: Sequence[str]) -> argparse.ArgumentParser | None:
    """The parser of the (sub)command ``words``, hidden ones included; None if there is none."""
    for word in words:
        subparsers = _subparsers(parser)
        if subparsers is None or word not in subparsers.choices:
            return None
        parser = subparsers.choices[word]
    return parser
