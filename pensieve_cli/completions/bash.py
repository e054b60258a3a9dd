"""The bash completion script."""

from __future__ import annotations

from pensieve_cli.completions.shared import (
    HEADER,
    ValueSyntax,
    case_arm,
    is_subcommand_function,
    models_function,
    safe_words,
    takes_value_function,
    value_arms,
)
from pensieve_cli.completions.spec import Spec

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


BASH_VALUES = ValueSyntax(
    words=lambda words: f'__pensieve_reply "{words}" "$cur"',
    models=lambda extra: f'__pensieve_reply "$(__pensieve_models){extra}" "$cur"',
    file='__pensieve_files -f "$cur"', dir='__pensieve_files -d "$cur"', anything="COMPREPLY=()",
)


def bash(spec: Spec) -> str:
    commands = list(spec.root.walk())
    out = [HEADER.format(comment="#", shell="bash")]
    out.append(models_function(spec, BASH_MODELS, BASH_NAMES))

    lines = ["", "__pensieve_subcommands() {  # the subcommands of command $1", '    case "$1" in']
    for command in commands:
        if command.subcommands:
            case_arm(lines, [f"'{command.path}'"], f"echo \"{safe_words(c.words[-1] for c in command.subcommands)}\"")
    lines += ["    esac", "}", ""]
    lines += [*is_subcommand_function(commands), ""]
    lines += ["__pensieve_options() {  # the options of command $1", '    case "$1" in']
    for command in commands:
        flags = [flag for option in command.options for flag in option.flags]
        case_arm(lines, [f"'{command.path}'"], f'echo "{safe_words(flags)}"')
    lines += ["    esac", "}", ""]
    lines += takes_value_function(commands)
    out.append("\n".join(lines) + "\n")

    values = value_arms(commands, BASH_VALUES)
    out.append(BASH_MAIN.replace("__VALUES__\n", "".join(f"{line}\n" for line in values)))
    return "".join(out)
