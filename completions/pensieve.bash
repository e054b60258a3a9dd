# bash completion for pensieve. Generated from the CLI's parser; do not edit.
# Regenerate: python -m pensieve_cli.completions --write completions/  (or: pensieve completions bash)

# Installed model names, straight from the model store (no Python at TAB time), plus the embedded one.
__pensieve_models() {
    local root manifest
    if [ -n "${PENSIEVE_HOME:-}" ]; then
        root="${PENSIEVE_HOME/#\~/$HOME}/data/models"
    else
        case "${OSTYPE:-}" in
            darwin*) root="$HOME/Library/Application Support/pensieve/models" ;;
            *) root="${XDG_DATA_HOME:-$HOME/.local/share}/pensieve/models" ;;
        esac
    fi
    printf '%s\n' smollm2-135m
    while IFS= read -r manifest; do
        manifest="${manifest%/manifest.json}"
        printf '%s\n' "${manifest##*/}"
    done < <(compgen -G "$root/*/manifest.json")
}

__pensieve_subcommands() {  # the subcommands of command $1
    case "$1" in
        '') echo "setup serve start stop restart status logs doctor models config claude-env cache completions" ;;
        'models') echo "list info rm default import map pull" ;;
        'config') echo "path get set unset list" ;;
        'cache') echo "info list clear" ;;
    esac
}

__pensieve_is_subcommand() {  # is $2 a subcommand of command $1?
    case "$1|$2" in
        '|setup'|'|serve'|'|start'|'|stop'|'|restart'|'|status'|'|logs'|'|doctor'|'|models'|'|config'|'|claude-env'|'|cache'|'|completions'|'models|list'|'models|info'|'models|rm'|'models|default'|'models|import'|'models|map'|'models|pull'|'config|path'|'config|get'|'config|set'|'config|unset'|'config|list'|'cache|info'|'cache|list'|'cache|clear') return 0 ;;
    esac
    return 1
}

__pensieve_options() {  # the options of command $1
    case "$1" in
        '') echo "-h --help --version -v --verbose -q --quiet" ;;
        'setup') echo "-h --help -y --yes --dry-run --model --port --start --undo --upstream --upstream-model --upstream-api-key --upstream-api --upstream-context-length -v --verbose -q --quiet" ;;
        'serve') echo "-h --help --host --port --model --engine --context-length --parallel --log-level -v --verbose -q --quiet" ;;
        'start') echo "-h --help --host --port --model --engine --context-length --parallel --log-level -v --verbose -q --quiet" ;;
        'stop') echo "-h --help --timeout -v --verbose -q --quiet" ;;
        'restart') echo "-h --help --host --port --model --engine --context-length --parallel --log-level --timeout -v --verbose -q --quiet" ;;
        'status') echo "-h --help --json -v --verbose -q --quiet" ;;
        'logs') echo "-h --help -f --follow -n --lines -v --verbose -q --quiet" ;;
        'doctor') echo "-h --help --json --claude --no-load -v --verbose -q --quiet" ;;
        'models') echo "-h --help -v --verbose -q --quiet" ;;
        'models list') echo "-h --help --json -v --verbose -q --quiet" ;;
        'models info') echo "-h --help --json -v --verbose -q --quiet" ;;
        'models rm') echo "-h --help -y --yes --force -v --verbose -q --quiet" ;;
        'models default') echo "-h --help -v --verbose -q --quiet" ;;
        'models import') echo "-h --help --name -v --verbose -q --quiet" ;;
        'models map') echo "-h --help --json -v --verbose -q --quiet" ;;
        'models pull') echo "-h --help --revision --name -y --yes -v --verbose -q --quiet" ;;
        'config') echo "-h --help -v --verbose -q --quiet" ;;
        'config path') echo "-h --help -v --verbose -q --quiet" ;;
        'config get') echo "-h --help -v --verbose -q --quiet" ;;
        'config set') echo "-h --help -v --verbose -q --quiet" ;;
        'config unset') echo "-h --help -v --verbose -q --quiet" ;;
        'config list') echo "-h --help --json -v --verbose -q --quiet" ;;
        'claude-env') echo "-h --help --shell --json --port -v --verbose -q --quiet" ;;
        'cache') echo "-h --help -v --verbose -q --quiet" ;;
        'cache info') echo "-h --help --json -v --verbose -q --quiet" ;;
        'cache list') echo "-h --help --json -v --verbose -q --quiet" ;;
        'cache clear') echo "-h --help --json -v --verbose -q --quiet" ;;
        'completions') echo "-h --help --write -v --verbose -q --quiet" ;;
    esac
}

__pensieve_takes_value() {  # does option $2 of command $1 take a value?
    case "$1|$2" in
        'setup|--model'|'setup|--port'|'setup|--upstream'|'setup|--upstream-model'|'setup|--upstream-api-key'|'setup|--upstream-api'|'setup|--upstream-context-length'|'serve|--host'|'serve|--port'|'serve|--model'|'serve|--engine'|'serve|--context-length'|'serve|--parallel'|'serve|--log-level'|'start|--host'|'start|--port'|'start|--model'|'start|--engine'|'start|--context-length'|'start|--parallel'|'start|--log-level'|'stop|--timeout'|'restart|--host'|'restart|--port'|'restart|--model'|'restart|--engine'|'restart|--context-length'|'restart|--parallel'|'restart|--log-level'|'restart|--timeout'|'logs|-n'|'logs|--lines'|'models import|--name'|'models pull|--revision'|'models pull|--name'|'claude-env|--port'|'completions|--write') return 0 ;;
    esac
    return 1
}

# Complete the value of an option ($2 = --flag) or the Nth positional ($2 = #N) of command $1;
# $3 is the word being completed, $4 the positional before it.
__pensieve_value() {
    local IFS=$'\n' cur="$3"
    case "$1|$2" in
        'setup|--model') __pensieve_reply "$(__pensieve_models) qwen2.5-coder-1.5b qwen2.5-coder-7b qwen2.5-coder-14b qwen3-4b qwen3-8b qwen3-30b-a3b phi-3-mini" "$cur" ;;
        'setup|--upstream-api') __pensieve_reply "openai anthropic" "$cur" ;;
        'serve|--model') __pensieve_reply "$(__pensieve_models)" "$cur" ;;
        'serve|--engine') __pensieve_reply "auto mlx llamacpp upstream" "$cur" ;;
        'serve|--log-level') __pensieve_reply "debug info warning error" "$cur" ;;
        'start|--model') __pensieve_reply "$(__pensieve_models)" "$cur" ;;
        'start|--engine') __pensieve_reply "auto mlx llamacpp upstream" "$cur" ;;
        'start|--log-level') __pensieve_reply "debug info warning error" "$cur" ;;
        'restart|--model') __pensieve_reply "$(__pensieve_models)" "$cur" ;;
        'restart|--engine') __pensieve_reply "auto mlx llamacpp upstream" "$cur" ;;
        'restart|--log-level') __pensieve_reply "debug info warning error" "$cur" ;;
        'models info|#1') __pensieve_reply "$(__pensieve_models)" "$cur" ;;
        'models rm|#1') __pensieve_reply "$(__pensieve_models)" "$cur" ;;
        'models default|#1') __pensieve_reply "$(__pensieve_models)" "$cur" ;;
        'models import|#1') __pensieve_files -f "$cur" ;;
        'models map|#1') __pensieve_reply "opus sonnet haiku" "$cur" ;;
        'models map|#2') __pensieve_reply "$(__pensieve_models)" "$cur" ;;
        'models pull|#1') __pensieve_reply "qwen2.5-coder-1.5b qwen2.5-coder-7b qwen2.5-coder-14b qwen3-4b qwen3-8b qwen3-30b-a3b phi-3-mini" "$cur" ;;
        'config get|#1') __pensieve_reply "host port auth_token default_model engine tiers.opus tiers.sonnet tiers.haiku temperature repeat_penalty context_policy context_length max_body_bytes max_messages max_tools queue_size parallel threads compute_threads prefix_cache_bytes disk_cache_bytes ping_interval allowed_origins log_level upstream_url upstream_api_key upstream_model upstream_api upstream_context_length upstream_timeout" "$cur" ;;
        'config set|#1') __pensieve_reply "host port auth_token default_model engine tiers.opus tiers.sonnet tiers.haiku temperature repeat_penalty context_policy context_length max_body_bytes max_messages max_tools queue_size parallel threads compute_threads prefix_cache_bytes disk_cache_bytes ping_interval allowed_origins log_level upstream_url upstream_api_key upstream_model upstream_api upstream_context_length upstream_timeout" "$cur" ;;
        'config set|#2') case "${4:-}" in 'default_model'|'tiers.opus'|'tiers.sonnet'|'tiers.haiku') __pensieve_reply "$(__pensieve_models)" "$cur" ;; 'engine') __pensieve_reply "auto mlx llamacpp upstream" "$cur" ;; 'context_policy') __pensieve_reply "auto fit strict" "$cur" ;; 'log_level') __pensieve_reply "debug info warning error" "$cur" ;; 'upstream_api') __pensieve_reply "openai anthropic" "$cur" ;; *) COMPREPLY=() ;; esac ;;
        'config unset|#1') __pensieve_reply "host port auth_token default_model engine tiers.opus tiers.sonnet tiers.haiku temperature repeat_penalty context_policy context_length max_body_bytes max_messages max_tools queue_size parallel threads compute_threads prefix_cache_bytes disk_cache_bytes ping_interval allowed_origins log_level upstream_url upstream_api_key upstream_model upstream_api upstream_context_length upstream_timeout" "$cur" ;;
        'completions|--write') __pensieve_files -d "$cur" ;;
        'completions|#1') __pensieve_reply "bash zsh fish" "$cur" ;;
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
