"""Shell completion scripts for bash, zsh and fish, generated from the argparse parser.

Generating them from ``pensieve_cli.main.build_parser()`` means a new command, option or choice is
completed as soon as it exists: nothing is maintained by hand. The committed copies in
``completions/`` are regenerated with ``python -m pensieve_cli.completions --write completions/``
(a test fails when they are stale).

Model names are completed at TAB time, without starting Python (which would make TAB feel slow):
the script lists ``$PENSIEVE_HOME/data/models/*/manifest.json`` (or the platform's data folder),
plus the embedded model. If ``pensieve models list`` has a hidden ``--names`` flag when the
scripts are generated, the script asks it first and falls back to the folder listing.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Callable, Iterable, Sequence
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
    try:
        from pensieve_server.models import catalog
    except ImportError:  # pragma: no cover - the catalogue ships with the server
        return ()
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


# -- shared pieces -----------------------------------------------------------------------------------

HEADER = ("{comment} {shell} completion for pensieve. Generated from the CLI's parser; do not edit.\n"
          f"{{comment}} Regenerate: {REGENERATE}  (or: pensieve completions {{shell}})\n")


def _value_options(command: Command) -> list[str]:
    return [flag for option in command.options if option.value is not None for flag in option.flags]


def _case_key(*parts: str) -> str:
    """``path|thing`` as a single-quoted case pattern (paths and flags hold no quotes)."""
    return "'" + "|".join(parts) + "'"


def _words(words: Iterable[str]) -> str:
    return " ".join(word for word in words if SAFE_WORD.match(word))


def _value_arms(commands: Iterable[Command], render: Callable[[Value], str], nothing: str) -> list[str]:
    """The arms of ``__pensieve_value``'s case: option values, then positionals (a free-form one gets
    ``nothing``, so that the catch-all for "no positional here" does not offer options instead)."""
    arms: list[str] = []
    for command in commands:
        for option in command.options:
            if option.value is not None and option.value.kind != ANY:
                _bash_case(arms, [_case_key(command.path, flag) for flag in option.flags], render(option.value))
        for pattern, positional in _positional_keys(command):
            _bash_case(arms, [pattern], nothing if positional.value.kind == ANY else render(positional.value))
    return arms


def _positional_keys(command: Command) -> list[tuple[str, Positional]]:
    """``(case pattern, positional)``: ``#1``, ``#2``... and ``#*`` for a repeating last one."""
    keys = []
    for index, positional in enumerate(command.positionals, start=1):
        keys.append((_case_key(command.path, f"#{index}"), positional))
        if positional.repeats:
            keys.append((_case_key(command.path, "#") + "*", positional))
            break
    return keys


# -- bash --------------------------------------------------------------------------------------------

BASH_MODELS = r"""
# Installed model names, straight from the model store (no Python at TAB time), plus the embedded one.
__pensieve_models() {
    local root manifest
__NAMES__    if [ -n "${PENSIEVE_HOME:-}" ]; then
        root="${PENSIEVE_HOME/#\~/$HOME}/data/models"
    else
        case "${OSTYPE:-}" in
            darwin*) root="$HOME/Library/Application Support/pensieve/models" ;;
            *) root="${XDG_DATA_HOME:-$HOME/.local/share}/pensieve/models" ;;
        esac
    fi
    printf '%s\n' __EMBEDDED__
    while IFS= read -r manifest; do
        manifest="${manifest%/manifest.json}"
        printf '%s\n' "${manifest##*/}"
    done < <(compgen -G "$root/*/manifest.json")
}
"""

BASH_NAMES = """    if command -v pensieve >/dev/null 2>&1 && pensieve models list --names 2>/dev/null; then
        return 0
    fi
"""

BASH_MAIN = r"""
# Complete the value of an option ($2 = --flag) or the Nth positional ($2 = #N) of command $1;
# $3 is the word being completed, $4 the positional before it.
__pensieve_value() {
    local IFS=$'\n' cur="$3"
    case "$1|$2" in
__VALUES__
        *'|#'*) __pensieve_reply "$(__pensieve_options "$1")" "$cur" ;;  # no positional here: the options
        *) COMPREPLY=() ;;
    esac
}

__pensieve_reply() {  # $1: the candidate words, $2: the word being completed
    local IFS=$' \t\n'
    COMPREPLY=($(compgen -W "$1" -- "$2"))
}

__pensieve_files() {  # $1: -f (files) or -d (folders), $2: the word being completed
    local IFS=$'\n'
    compopt -o filenames 2>/dev/null
    COMPREPLY=($(compgen "$1" -- "$2"))
}

_pensieve() {
    local cur="${COMP_WORDS[COMP_CWORD]}" cmd="" word="" last="" prev="" i=1 npos=0 expect=""
    while [ "$i" -lt "$COMP_CWORD" ]; do
        word="${COMP_WORDS[i]}"
        if [ "$word" = "=" ] && [ -n "$last" ]; then
            expect="$last"  # --flag=value, split at '=' by bash: the value comes next
        elif [ -n "$expect" ]; then
            expect=""
        else
            case "$word" in
                -*=*) ;;
                -*) __pensieve_takes_value "$cmd" "$word" && expect="$word" ;;
                *)
                    if [ "$npos" -eq 0 ] && __pensieve_is_subcommand "$cmd" "$word"; then
                        cmd="${cmd:+$cmd }$word"
                    else
                        npos=$((npos + 1))
                        prev="$word"
                    fi ;;
            esac
        fi
        case "$word" in -*) last="$word" ;; *) last="" ;; esac
        i=$((i + 1))
    done
    if [ "$cur" = "=" ] && [ -n "$last" ]; then
        __pensieve_value "$cmd" "$last" ""
        return 0
    fi
    if [ -n "$expect" ]; then
        __pensieve_value "$cmd" "$expect" "$cur"
        return 0
    fi
    case "$cur" in
        -*=*) __pensieve_value "$cmd" "${cur%%=*}" "${cur#*=}"; return 0 ;;
        -*) __pensieve_reply "$(__pensieve_options "$cmd")" "$cur"; return 0 ;;
    esac
    local subcommands
    subcommands="$(__pensieve_subcommands "$cmd")"
    if [ -n "$subcommands" ] && [ "$npos" -eq 0 ]; then
        __pensieve_reply "$subcommands" "$cur"
        return 0
    fi
    __pensieve_value "$cmd" "#$((npos + 1))" "$cur" "$prev"
}

complete -F _pensieve pensieve
"""


def _keyed_case(value: Value, body: Callable[[Value], str], fallback: str) -> str:
    """``case "$4" in KEY) ...;; esac``: the value's completion chosen by the positional before it."""
    arms = " ".join(f"{'|'.join(_quote_keys(keys))}) {body(inner)} ;;" for keys, inner in value.keyed)
    return f'case "${{4:-}}" in {arms} *) {fallback} ;; esac'


def _quote_keys(keys: Iterable[str]) -> list[str]:
    return [f"'{key}'" for key in keys if SAFE_WORD.match(key)]


def _bash_value(value: Value) -> str:
    if value.kind == KEYED:
        return _keyed_case(value, _bash_value, "COMPREPLY=()")
    if value.kind == WORDS:
        return f'__pensieve_reply "{_words(value.words)}" "$cur"'
    if value.kind == MODELS:
        extra = f" {_words(value.words)}" if value.words else ""
        return f'__pensieve_reply "$(__pensieve_models){extra}" "$cur"'
    if value.kind == FILE:
        return '__pensieve_files -f "$cur"'
    if value.kind == DIR:
        return '__pensieve_files -d "$cur"'
    return "COMPREPLY=()"


def _bash_case(lines: list[str], patterns: Sequence[str], body: str, indent: str = "        ") -> None:
    if patterns:
        lines.append(f"{indent}{'|'.join(patterns)}) {body} ;;")


def bash(spec: Spec) -> str:
    commands = list(spec.root.walk())
    out = [HEADER.format(comment="#", shell="bash")]
    models = BASH_MODELS.replace("__EMBEDDED__", spec.embedded_model)
    out.append(models.replace("__NAMES__", BASH_NAMES if spec.names_command else ""))

    lines = ["", "__pensieve_subcommands() {  # the subcommands of command $1", '    case "$1" in']
    for command in commands:
        if command.subcommands:
            _bash_case(lines, [f"'{command.path}'"], f"echo \"{_words(c.words[-1] for c in command.subcommands)}\"")
    lines += ["    esac", "}", ""]
    lines += ["__pensieve_is_subcommand() {  # is $2 a subcommand of command $1?", '    case "$1|$2" in']
    patterns = [_case_key(command.path, sub.words[-1]) for command in commands for sub in command.subcommands]
    _bash_case(lines, patterns, "return 0")
    lines += ["    esac", "    return 1", "}", ""]
    lines += ["__pensieve_options() {  # the options of command $1", '    case "$1" in']
    for command in commands:
        flags = [flag for option in command.options for flag in option.flags]
        _bash_case(lines, [f"'{command.path}'"], f'echo "{_words(flags)}"')
    lines += ["    esac", "}", ""]
    lines += ["__pensieve_takes_value() {  # does option $2 of command $1 take a value?", '    case "$1|$2" in']
    patterns = [_case_key(command.path, flag) for command in commands for flag in _value_options(command)]
    _bash_case(lines, patterns, "return 0")
    lines += ["    esac", "    return 1", "}"]
    out.append("\n".join(lines) + "\n")

    values = _value_arms(commands, _bash_value, "COMPREPLY=()")
    out.append(BASH_MAIN.replace("__VALUES__\n", "".join(f"{line}\n" for line in values)))
    return "".join(out)


# -- zsh ---------------------------------------------------------------------------------------------

def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_item(name: str, help: str) -> str:
    """``name:description`` for ``_describe`` (a colon in the name is escaped)."""
    return _zsh_quote(name.replace(":", "\\:") + (f":{help}" if help else ""))


ZSH_MODELS = r"""
# Installed model names, straight from the model store (no Python at TAB time), plus the embedded one.
__pensieve_models() {
    local root manifest
__NAMES__    if [[ -n ${PENSIEVE_HOME:-} ]]; then
        root="${PENSIEVE_HOME/#\~/$HOME}/data/models"
    elif [[ $OSTYPE == darwin* ]]; then
        root="$HOME/Library/Application Support/pensieve/models"
    else
        root="${XDG_DATA_HOME:-$HOME/.local/share}/pensieve/models"
    fi
    print -r -- __EMBEDDED__
    for manifest in "$root"/*/manifest.json(N); do
        print -r -- "${${manifest%/manifest.json}##*/}"
    done
}
"""

ZSH_NAMES = """    if (( $+commands[pensieve] )) && pensieve models list --names 2>/dev/null; then
        return 0
    fi
"""

ZSH_MAIN = r"""
# Complete the value of an option ($2 = --flag) or the Nth positional ($2 = #N) of command $1;
# $4 is the positional before it.
__pensieve_value() {
    local -a models reply
    case "$1|$2" in
__VALUES__
        *'|#'*) __pensieve_options "$1"; _describe -t options 'option' reply ;;  # no positional here: the options
        *) _message 'value' ;;
    esac
}

_pensieve() {
    local cmd="" word="" prev="" expect="" cur="${words[CURRENT]}"
    local -i i=2 npos=0
    local -a reply
    while (( i < CURRENT )); do
        word="${words[i]}"
        if [[ -n $expect ]]; then
            expect=""
        else
            case "$word" in
                -*=*) ;;
                -*) __pensieve_takes_value "$cmd" "$word" && expect="$word" ;;
                *)
                    if (( npos == 0 )) && __pensieve_is_subcommand "$cmd" "$word"; then
                        cmd="${cmd:+$cmd }$word"
                    else
                        npos+=1
                        prev="$word"
                    fi ;;
            esac
        fi
        i+=1
    done
    if [[ -n $expect ]]; then
        __pensieve_value "$cmd" "$expect"
        return
    fi
    if [[ $cur == -*=* ]]; then
        local flag="${cur%%=*}"
        compset -P '*='
        __pensieve_value "$cmd" "$flag"
        return
    fi
    if [[ $cur == -* ]]; then
        __pensieve_options "$cmd"
        _describe -t options 'option' reply
        return
    fi
    reply=()
    __pensieve_subcommands "$cmd"
    if (( ${#reply} && npos == 0 )); then
        _describe -t commands 'command' reply
        return
    fi
    __pensieve_value "$cmd" "#$(( npos + 1 ))" "$cur" "$prev"
}

if [[ "${funcstack[1]}" == _pensieve ]]; then
    _pensieve "$@"  # autoloaded from $fpath by compinit
else
    compdef _pensieve pensieve  # sourced
fi
"""


def _zsh_value(value: Value) -> str:
    if value.kind == KEYED:
        return _keyed_case(value, _zsh_value, "_message 'value'")
    if value.kind == WORDS:
        return f"compadd -- {_words(value.words)}"
    if value.kind == MODELS:
        extra = f" {_words(value.words)}" if value.words else ""
        return f'models=(${{(f)"$(__pensieve_models)"}}{extra}); compadd -a models'
    if value.kind == FILE:
        return "_files"
    if value.kind == DIR:
        return "_files -/"
    return "_message 'value'"


def zsh(spec: Spec) -> str:
    commands = list(spec.root.walk())
    out = ["#compdef pensieve\n", HEADER.format(comment="#", shell="zsh")]
    models = ZSH_MODELS.replace("__EMBEDDED__", spec.embedded_model)
    out.append(models.replace("__NAMES__", ZSH_NAMES if spec.names_command else ""))

    lines = ["", "__pensieve_subcommands() {  # reply=(name:description ...) for command $1", '    case "$1" in']
    for command in commands:
        if command.subcommands:
            items = " ".join(_zsh_item(sub.words[-1], sub.help) for sub in command.subcommands)
            lines.append(f"        '{command.path}') reply=({items}) ;;")
    lines += ["    esac", "}", ""]
    lines += ["__pensieve_is_subcommand() {  # is $2 a subcommand of command $1?", '    case "$1|$2" in']
    patterns = [_case_key(command.path, sub.words[-1]) for command in commands for sub in command.subcommands]
    _bash_case(lines, patterns, "return 0")
    lines += ["    esac", "    return 1", "}", ""]
    lines += ["__pensieve_options() {  # reply=(flag:description ...) for command $1", '    case "$1" in']
    for command in commands:
        items = " ".join(_zsh_item(flag, option.help) for option in command.options for flag in option.flags)
        lines.append(f"        '{command.path}') reply=({items}) ;;")
    lines += ["    esac", "}", ""]
    lines += ["__pensieve_takes_value() {  # does option $2 of command $1 take a value?", '    case "$1|$2" in']
    patterns = [_case_key(command.path, flag) for command in commands for flag in _value_options(command)]
    _bash_case(lines, patterns, "return 0")
    lines += ["    esac", "    return 1", "}"]
    out.append("\n".join(lines) + "\n")

    values = _value_arms(commands, _zsh_value, "_message 'value'")
    out.append(ZSH_MAIN.replace("__VALUES__\n", "".join(f"{line}\n" for line in values)))
    return "".join(out)


# -- fish --------------------------------------------------------------------------------------------

def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


FISH_MODELS = r"""
# Installed model names, straight from the model store (no Python at TAB time), plus the embedded one.
function __pensieve_models
__NAMES__    set -l root
    if set -q PENSIEVE_HOME; and test -n "$PENSIEVE_HOME"
        set root (string replace -r '^~' $HOME -- $PENSIEVE_HOME)/data/models
    else if test (uname -s) = Darwin
        set root "$HOME/Library/Application Support/pensieve/models"
    else if set -q XDG_DATA_HOME; and test -n "$XDG_DATA_HOME"
        set root $XDG_DATA_HOME/pensieve/models
    else
        set root $HOME/.local/share/pensieve/models
    end
    printf '%s\t%s\n' __EMBEDDED__ 'embedded model'
    for manifest in $root/*/manifest.json
        string replace -r '.*/([^/]+)/manifest\.json$' '$1\tinstalled model' -- $manifest
    end
end
"""

FISH_NAMES = """    if command -q pensieve; and pensieve models list --names 2>/dev/null
        return 0
    end
"""

FISH_STATE = r"""
# Where the command line stands, one per line: the command path, how many positionals follow it,
# whether the last word is an option that waits for its value (1/0), and the last positional.
function __pensieve_state
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l cmd ''
    set -l npos 0
    set -l expect 0
    set -l prev ''
    for token in $tokens
        if test $expect = 1
            set expect 0
            continue
        end
        switch $token
            case '-*=*'
            case '-*'
                if __pensieve_takes_value "$cmd" $token
                    set expect 1
                end
            case '*'
                if test $npos = 0; and __pensieve_is_subcommand "$cmd" $token
                    set cmd (string trim -- "$cmd $token")
                else
                    set npos (math $npos + 1)
                    set prev $token
                end
        end
    end
    printf '%s\n' "$cmd" $npos $expect "$prev"
end

# Is the positional before the cursor one of $argv (`config set engine <TAB>`)?
function __pensieve_after
    set -l state (__pensieve_state)
    contains -- "$state[4]" $argv
end

# Is the command line in command $argv[1] (options and their values complete here)?
function __pensieve_in
    set -l state (__pensieve_state)
    test "$state[1]" = "$argv[1]"
end

# Is the next word positional number $argv[2] of command $argv[1] ('*': that one or any later)?
function __pensieve_at
    set -l state (__pensieve_state)
    test "$state[1]" = "$argv[1]"; and test $state[3] = 0; or return 1
    if test (count $argv) -gt 2
        test (math $state[2] + 1) -ge $argv[2]
    else
        test (math $state[2] + 1) -eq $argv[2]
    end
end
"""


def _fish_value_args(value: Value) -> str:
    if value.kind == WORDS:
        return f"-f -a {_fish_quote(_words(value.words))}"
    if value.kind == MODELS:
        extra = f" {_words(value.words)}" if value.words else ""
        return f"-f -a {_fish_quote('(__pensieve_models)' + extra)}"
    if value.kind == DIR:
        return "-f -a '(__fish_complete_directories (commandline -ct))'"
    if value.kind == FILE:
        return "-F"
    return "-f"


def _fish_flags(flags: Sequence[str]) -> str:
    parts = []
    for flag in flags:
        if flag.startswith("--"):
            parts.append(f"-l {flag[2:]}")
        elif len(flag) == 2:
            parts.append(f"-s {flag[1]}")
        else:
            parts.append(f"-o {flag[1:]}")
    return " ".join(parts)


def fish(spec: Spec) -> str:
    commands = list(spec.root.walk())
    out = [HEADER.format(comment="#", shell="fish")]
    models = FISH_MODELS.replace("__EMBEDDED__", spec.embedded_model)
    out.append(models.replace("__NAMES__", FISH_NAMES if spec.names_command else ""))

    lines = ["", "function __pensieve_is_subcommand --description 'is $argv[2] a subcommand of command $argv[1]?'",
             '    switch "$argv[1]|$argv[2]"']
    patterns = [_case_key(command.path, sub.words[-1]) for command in commands for sub in command.subcommands]
    if patterns:
        lines += [f"        case {' '.join(patterns)}", "            return 0"]
    lines += ["    end", "    return 1", "end", ""]
    lines += ["function __pensieve_takes_value --description 'does option $argv[2] of command $argv[1] take a value?'",
              '    switch "$argv[1]|$argv[2]"']
    patterns = [_case_key(command.path, flag) for command in commands for flag in _value_options(command)]
    if patterns:
        lines += [f"        case {' '.join(patterns)}", "            return 0"]
    lines += ["    end", "    return 1", "end"]
    out.append("\n".join(lines) + "\n")
    out.append(FISH_STATE)

    rows = ["", "complete -c pensieve -f  # no file names unless a value is a path"]
    for command in commands:
        path = _fish_quote(command.path)
        if command.subcommands:
            rows.append("")
            for sub in command.subcommands:
                rows.append(f"complete -c pensieve -n {_fish_quote(f'__pensieve_at {path} 1')} "
                            f"-a {sub.words[-1]} -d {_fish_quote(sub.help)}")
        for option in command.options:
            value = "" if option.value is None else f" -r {_fish_value_args(option.value)}"
            rows.append(f"complete -c pensieve -n {_fish_quote(f'__pensieve_in {path}')} "
                        f"{_fish_flags(option.flags)}{value} -d {_fish_quote(option.help)}")
        for index, positional in enumerate(command.positionals, start=1):
            at = f"__pensieve_at {path} {index}" + (" '*'" if positional.repeats else "")
            if positional.value.kind == KEYED:
                for keys, inner in positional.value.keyed:
                    condition = f"{at}; and __pensieve_after {' '.join(_quote_keys(keys))}"
                    rows.append(f"complete -c pensieve -n {_fish_quote(condition)} {_fish_value_args(inner)}")
            elif positional.value.kind != ANY:
                rows.append(f"complete -c pensieve -n {_fish_quote(at)} {_fish_value_args(positional.value)}")
    out.append("\n".join(rows) + "\n")
    return "".join(out)


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


if __name__ == "__main__":
    sys.exit(main())
