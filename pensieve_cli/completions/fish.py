"""The fish completion script."""

from __future__ import annotations

from collections.abc import Sequence

from pensieve_cli.completions.shared import (
    HEADER,
    ValueSyntax,
    case_key,
    models_function,
    quote_keys,
    render_value,
    value_options,
)
from pensieve_cli.completions.spec import ANY, KEYED, Spec, Value


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


FISH_VALUES = ValueSyntax(
    words=lambda words: f"-f -a {_fish_quote(words)}",
    models=lambda extra: f"-f -a {_fish_quote('(__pensieve_models)' + extra)}",
    file="-F", dir="-f -a '(__fish_complete_directories (commandline -ct))'", anything="-f",
    keyed=False,  # fish adds a condition per key instead (see fish())
)


def _fish_value_args(value: Value) -> str:
    return render_value(value, FISH_VALUES)


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
    out.append(models_function(spec, FISH_MODELS, FISH_NAMES))

    lines = ["", "function __pensieve_is_subcommand --description 'is $argv[2] a subcommand of command $argv[1]?'",
             '    switch "$argv[1]|$argv[2]"']
    patterns = [case_key(command.path, sub.words[-1]) for command in commands for sub in command.subcommands]
    if patterns:
        lines += [f"        case {' '.join(patterns)}", "            return 0"]
    lines += ["    end", "    return 1", "end", ""]
    lines += ["function __pensieve_takes_value --description 'does option $argv[2] of command $argv[1] take a value?'",
              '    switch "$argv[1]|$argv[2]"']
    patterns = [case_key(command.path, flag) for command in commands for flag in value_options(command)]
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
                    condition = f"{at}; and __pensieve_after {' '.join(quote_keys(keys))}"
                    rows.append(f"complete -c pensieve -n {_fish_quote(condition)} {_fish_value_args(inner)}")
            elif positional.value.kind != ANY:
                rows.append(f"complete -c pensieve -n {_fish_quote(at)} {_fish_value_args(positional.value)}")
    out.append("\n".join(rows) + "\n")
    return "".join(out)
