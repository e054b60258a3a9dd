"""Pieces the bash, zsh and fish generators share: the header and the case arms keyed by command path."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from pensieve_cli.completions.spec import ANY, REGENERATE, SAFE_WORD, Command, Positional, Value

HEADER = ("{comment} {shell} completion for pensieve. Generated from the CLI's parser; do not edit.\n"
          f"{{comment}} Regenerate: {REGENERATE}  (or: pensieve completions {{shell}})\n")


def value_options(command: Command) -> list[str]:
    return [flag for option in command.options if option.value is not None for flag in option.flags]


def case_key(*parts: str) -> str:
    """``path|thing`` as a single-quoted case pattern (paths and flags hold no quotes)."""
    return "'" + "|".join(parts) + "'"


def safe_words(words: Iterable[str]) -> str:
    return " ".join(word for word in words if SAFE_WORD.match(word))


def value_arms(commands: Iterable[Command], render: Callable[[Value], str], nothing: str) -> list[str]:
    """The arms of ``__pensieve_value``'s case: option values, then positionals (a free-form one gets
    ``nothing``, so that the catch-all for "no positional here" does not offer options instead)."""
    arms: list[str] = []
    for command in commands:
        for option in command.options:
            if option.value is not None and option.value.kind != ANY:
                case_arm(arms, [case_key(command.path, flag) for flag in option.flags], render(option.value))
        for pattern, positional in positional_keys(command):
            case_arm(arms, [pattern], nothing if positional.value.kind == ANY else render(positional.value))
    return arms


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
