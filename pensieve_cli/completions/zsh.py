"""The zsh completion script."""

from __future__ import annotations

from pensieve_cli.completions.shared import (
    HEADER,
    ValueSyntax,
    is_subcommand_function,
    models_function,
    takes_value_function,
    value_arms,
)
from pensieve_cli.completions.spec import Spec


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


ZSH_VALUES = ValueSyntax(
    words=lambda words: f"compadd -- {words}",
    models=lambda extra: f'models=(${{(f)"$(__pensieve_models)"}}{extra}); compadd -a models',
    file="_files", dir="_files -/", anything="_message 'value'",
)


def zsh(spec: Spec) -> str:
    commands = list(spec.root.walk())
    out = ["#compdef pensieve\n", HEADER.format(comment="#", shell="zsh")]
    out.append(models_function(spec, ZSH_MODELS, ZSH_NAMES))

    lines = ["", "__pensieve_subcommands() {  # reply=(name:description ...) for command $1", '    case "$1" in']
    for command in commands:
        if command.subcommands:
            items = " ".join(_zsh_item(sub.words[-1], sub.help) for sub in command.subcommands)
            lines.append(f"        '{command.path}') reply=({items}) ;;")
    lines += ["    esac", "}", ""]
    lines += [*is_subcommand_function(commands), ""]
    lines += ["__pensieve_options() {  # reply=(flag:description ...) for command $1", '    case "$1" in']
    for command in commands:
        items = " ".join(_zsh_item(flag, option.help) for option in command.options for flag in option.flags)
        lines.append(f"        '{command.path}') reply=({items}) ;;")
    lines += ["    esac", "}", ""]
    lines += takes_value_function(commands)
    out.append("\n".join(lines) + "\n")

    values = value_arms(commands, ZSH_VALUES)
    out.append(ZSH_MAIN.replace("__VALUES__\n", "".join(f"{line}\n" for line in values)))
    return "".join(out)
