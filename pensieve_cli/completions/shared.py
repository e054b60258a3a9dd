"""Pieces the bash, zsh and fish generators share: the header and the case arms keyed by command path."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pensieve_cli.completions.spec import (
    ANY,
    DIR,
    FILE,
    KEYED,
    MODELS,
    REGENERATE,
    SAFE_WORD,
    WORDS,
    Command,
    Positional,
    Spec,
    Value,
)

HEADER = ("{comment} {shell} completion for pensieve. Generated from the CLI's parser; do not edit.\n"
          f"{{comment}} Regenerate: {REGENERATE}  (or: pensieve completions {{shell}})\n")


def value_options(command: Command) -> list[str]:
    return [flag for option in command.options if option.value is not None for flag in option.flags]


def case_key(*parts: str) -> str:
    """``path|thing`` as a single-quoted case pattern (paths and flags hold no quotes)."""
    return "'" + "|".join(parts) + "'"


def safe_words(words: Iterable[str]) -> str:
    return " ".join(word for word in words if SAFE_WORD.match(word))


def value_arms(commands: Iterable[Command], syntax: ValueSyntax) -> list[str]:
    """The arms of ``__pensieve_value``'s case: option values, then positionals (a free-form one gets
    ``syntax.anything``, so that the catch-all for "no positional here" does not offer options instead)."""
    arms: list[str] = []
    for command in commands:
        for option in command.options:
            if option.value is not None and option.value.kind != ANY:
                case_arm(arms, [case_key(command.path, flag) for flag in option.flags],
                         render_value(option.value, syntax))
        for pattern, positional in positional_keys(command):
            case_arm(arms, [pattern], render_value(positional.value, syntax))
    return arms


def is_subcommand_function(commands: Sequence[Command]) -> list[str]:
    """``__pensieve_is_subcommand``, the same in bash and zsh."""
    lines = ["__pensieve_is_subcommand() {  # is $2 a subcommand of command $1?", '    case "$1|$2" in']
    case_arm(lines, [case_key(command.path, sub.words[-1]) for command in commands for sub in command.subcommands],
             "return 0")
    return [*lines, "    esac", "    return 1", "}"]


def takes_value_function(commands: Sequence[Command]) -> list[str]:
    """``__pensieve_takes_value``, the same in bash and zsh."""
    lines = ["__pensieve_takes_value() {  # does option $2 of command $1 take a value?", '    case "$1|$2" in']
    case_arm(lines, [case_key(command.path, flag) for command in commands for flag in value_options(command)],
             "return 0")
    return [*lines, "    esac", "    return 1", "}"]


def positional_keys(command: Command) -> list[tuple[str, Positional]]:
    """``(case pattern, positional)``: ``#1``, ``#2``... and ``#*`` for a repeating last one."""
    keys = []
    for index, positional in enumerate(command.positionals, start=1):
        keys.append((case_key(command.path, f"#{index}"), positional))
        if positional.repeats:
            keys.append((case_key(command.path, "#") + "*", positional))
            break
    return keys


def keyed_case(value: Value, body: Callable[[Value], str], fallback: str) -> str:
    """``case "$4" in KEY) ...;; esac``: the value's completion chosen by the positional before it."""
    arms = " ".join(f"{'|'.join(quote_keys(keys))}) {body(inner)} ;;" for keys, inner in value.keyed)
    return f'case "${{4:-}}" in {arms} *) {fallback} ;; esac'


def quote_keys(keys: Iterable[str]) -> list[str]:
    return [f"'{key}'" for key in keys if SAFE_WORD.match(key)]


def case_arm(lines: list[str], patterns: Sequence[str], body: str, indent: str = "        ") -> None:
    if patterns:
        lines.append(f"{indent}{'|'.join(patterns)}) {body} ;;")


@dataclass(frozen=True)
class ValueSyntax:
    """How one shell completes each kind of :class:`~.spec.Value`."""

    words: Callable[[str], str]  # the choices, space-separated
    models: Callable[[str], str]  # " extra words" (or "") offered besides the installed models
    file: str
    dir: str
    anything: str  # no completion; also the fallback of a keyed value
    keyed: bool = True  # False: the shell chooses keyed values itself (fish's conditions)


def render_value(value: Value, syntax: ValueSyntax) -> str:
    if value.kind == KEYED and syntax.keyed:
        return keyed_case(value, lambda inner: render_value(inner, syntax), syntax.anything)
    if value.kind == WORDS:
        return syntax.words(safe_words(value.words))
    if value.kind == MODELS:
        return syntax.models(f" {safe_words(value.words)}" if value.words else "")
    if value.kind == FILE:
        return syntax.file
    if value.kind == DIR:
        return syntax.dir
    return syntax.anything


def models_function(spec: Spec, template: str, names: str) -> str:
    """The shell's ``__pensieve_models``: the embedded model's name, and ``names`` (ask ``pensieve models
    list --names`` first) when this CLI has that flag."""
    return template.replace("__EMBEDDED__", spec.embedded_model).replace("__NAMES__", names if spec.names_command else "")
