# fish completion for pensieve. Generated from the CLI's parser; do not edit.
# Regenerate: python -m pensieve_cli.completions --write completions/  (or: pensieve completions fish)

# Installed model names, straight from the model store (no Python at TAB time), plus the embedded one.
function __pensieve_models
    set -l root
    if set -q PENSIEVE_HOME; and test -n "$PENSIEVE_HOME"
        set root (string replace -r '^~' $HOME -- $PENSIEVE_HOME)/data/models
    else if test (uname -s) = Darwin
        set root "$HOME/Library/Application Support/pensieve/models"
    else if set -q XDG_DATA_HOME; and test -n "$XDG_DATA_HOME"
        set root $XDG_DATA_HOME/pensieve/models
    else
        set root $HOME/.local/share/pensieve/models
    end
    printf '%s\t%s\n' smollm2-135m 'embedded model'
    for manifest in $root/*/manifest.json
        string replace -r '.*/([^/]+)/manifest\.json$' '$1\tinstalled model' -- $manifest
    end
end

function __pensieve_is_subcommand --description 'is $argv[2] a subcommand of command $argv[1]?'
    switch "$argv[1]|$argv[2]"
        case '|setup' '|serve' '|start' '|stop' '|restart' '|status' '|logs' '|doctor' '|models' '|config' '|claude-env' '|cache' '|completions' 'models|list' 'models|info' 'models|rm' 'models|default' 'models|import' 'models|map' 'models|pull' 'config|path' 'config|get' 'config|set' 'config|unset' 'config|list' 'cache|info' 'cache|list' 'cache|clear'
            return 0
    end
    return 1
end

function __pensieve_takes_value --description 'does option $argv[2] of command $argv[1] take a value?'
    switch "$argv[1]|$argv[2]"
        case 'setup|--model' 'setup|--port' 'setup|--upstream' 'setup|--upstream-model' 'setup|--upstream-api-key' 'setup|--upstream-api' 'setup|--upstream-context-length' 'serve|--host' 'serve|--port' 'serve|--model' 'serve|--engine' 'serve|--context-length' 'serve|--parallel' 'serve|--log-level' 'start|--host' 'start|--port' 'start|--model' 'start|--engine' 'start|--context-length' 'start|--parallel' 'start|--log-level' 'stop|--timeout' 'restart|--host' 'restart|--port' 'restart|--model' 'restart|--engine' 'restart|--context-length' 'restart|--parallel' 'restart|--log-level' 'restart|--timeout' 'logs|-n' 'logs|--lines' 'models import|--name' 'models pull|--revision' 'models pull|--name' 'claude-env|--port' 'completions|--write'
            return 0
    end
    return 1
end

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

complete -c pensieve -f  # no file names unless a value is a path

complete -c pensieve -n '__pensieve_at \'\' 1' -a setup -d 'configure Claude Code to use the local server'
complete -c pensieve -n '__pensieve_at \'\' 1' -a serve -d 'run the API server in the foreground'
complete -c pensieve -n '__pensieve_at \'\' 1' -a start -d 'run the server in the background'
complete -c pensieve -n '__pensieve_at \'\' 1' -a stop -d 'stop the background server'
complete -c pensieve -n '__pensieve_at \'\' 1' -a restart -d 'restart the background server'
complete -c pensieve -n '__pensieve_at \'\' 1' -a status -d 'is the server running? pid, uptime, model, memory, requests'
complete -c pensieve -n '__pensieve_at \'\' 1' -a logs -d 'show the server log'
complete -c pensieve -n '__pensieve_at \'\' 1' -a doctor -d 'check the setup end to end and say how to fix what is wrong'
complete -c pensieve -n '__pensieve_at \'\' 1' -a models -d 'list, import, pull and remove local models; choose the default'
complete -c pensieve -n '__pensieve_at \'\' 1' -a config -d 'show or change Pensieve\'s settings'
complete -c pensieve -n '__pensieve_at \'\' 1' -a claude-env -d 'print the environment variables Claude Code needs'
complete -c pensieve -n '__pensieve_at \'\' 1' -a cache -d 'show or empty the prefix states saved on disk'
complete -c pensieve -n '__pensieve_at \'\' 1' -a completions -d 'print the shell completion script for bash, zsh or fish'
complete -c pensieve -n '__pensieve_in \'\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'\'' -l version -d 'show program\'s version number and exit'
complete -c pensieve -n '__pensieve_in \'\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'setup\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'setup\'' -s y -l yes -d 'ask nothing: use --model/--port, else the current settings (default smollm2-135m, 7777)'
complete -c pensieve -n '__pensieve_in \'setup\'' -l dry-run -d 'show the changes as a diff and change nothing'
complete -c pensieve -n '__pensieve_in \'setup\'' -l model -r -f -a '(__pensieve_models) qwen2.5-coder-1.5b qwen2.5-coder-7b qwen2.5-coder-14b qwen3-4b qwen3-8b qwen3-30b-a3b phi-3-mini' -d 'local model: smollm2-135m, qwen2.5-coder-1.5b, qwen2.5-coder-7b, qwen2.5-coder-14b, qwen3-4b, qwen3-8b, qwen3-30b-a3b, phi-3-mini or an installed one'
complete -c pensieve -n '__pensieve_in \'setup\'' -l port -r -f -d 'port the server listens on'
complete -c pensieve -n '__pensieve_in \'setup\'' -l start -d 'start the server in the background if it is not running'
complete -c pensieve -n '__pensieve_in \'setup\'' -l undo -d 'restore the files as they were before the last setup'
complete -c pensieve -n '__pensieve_in \'setup\'' -l upstream -r -f -d 'forward to an existing OpenAI-compatible server (vLLM, llama.cpp server, Ollama, LM Studio, mlx_lm.server) instead of a local model'
complete -c pensieve -n '__pensieve_in \'setup\'' -l upstream-model -r -f -d 'the upstream\'s model id (default: its first)'
complete -c pensieve -n '__pensieve_in \'setup\'' -l upstream-api-key -r -f -d 'API key the upstream expects (stored 0600)'
complete -c pensieve -n '__pensieve_in \'setup\'' -l upstream-api -r -f -a 'openai anthropic' -d 'what the upstream speaks (default openai; anthropic forwards /v1/messages)'
complete -c pensieve -n '__pensieve_in \'setup\'' -l upstream-context-length -r -f -d 'the upstream model\'s context in tokens, to fit long prompts (default: no fitting)'
complete -c pensieve -n '__pensieve_in \'setup\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'setup\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'serve\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'serve\'' -l host -r -f -d 'address to bind (default 127.0.0.1)'
complete -c pensieve -n '__pensieve_in \'serve\'' -l port -r -f -d 'port to listen on (default 7777)'
complete -c pensieve -n '__pensieve_in \'serve\'' -l model -r -f -a '(__pensieve_models)' -d 'local model to serve by default (default smollm2-135m)'
complete -c pensieve -n '__pensieve_in \'serve\'' -l engine -r -f -a 'auto mlx llamacpp upstream' -d 'inference engine (default auto; upstream forwards to upstream_url)'
complete -c pensieve -n '__pensieve_in \'serve\'' -l context-length -r -f -d 'cap the context window'
complete -c pensieve -n '__pensieve_in \'serve\'' -l parallel -r -f -d 'requests generated together (default 0: auto, 2 on llama.cpp where memory allows)'
complete -c pensieve -n '__pensieve_in \'serve\'' -l log-level -r -f -a 'debug info warning error' -d 'how much the server logs (default info)'
complete -c pensieve -n '__pensieve_in \'serve\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'serve\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'start\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'start\'' -l host -r -f -d 'address to bind (default 127.0.0.1)'
complete -c pensieve -n '__pensieve_in \'start\'' -l port -r -f -d 'port to listen on (default 7777)'
complete -c pensieve -n '__pensieve_in \'start\'' -l model -r -f -a '(__pensieve_models)' -d 'local model to serve by default (default smollm2-135m)'
complete -c pensieve -n '__pensieve_in \'start\'' -l engine -r -f -a 'auto mlx llamacpp upstream' -d 'inference engine (default auto; upstream forwards to upstream_url)'
complete -c pensieve -n '__pensieve_in \'start\'' -l context-length -r -f -d 'cap the context window'
complete -c pensieve -n '__pensieve_in \'start\'' -l parallel -r -f -d 'requests generated together (default 0: auto, 2 on llama.cpp where memory allows)'
complete -c pensieve -n '__pensieve_in \'start\'' -l log-level -r -f -a 'debug info warning error' -d 'how much the server logs (default info)'
complete -c pensieve -n '__pensieve_in \'start\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'start\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'stop\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'stop\'' -l timeout -r -f -d 'seconds to wait for a graceful stop before killing it (default 10)'
complete -c pensieve -n '__pensieve_in \'stop\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'stop\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'restart\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'restart\'' -l host -r -f -d 'address to bind (default 127.0.0.1)'
complete -c pensieve -n '__pensieve_in \'restart\'' -l port -r -f -d 'port to listen on (default 7777)'
complete -c pensieve -n '__pensieve_in \'restart\'' -l model -r -f -a '(__pensieve_models)' -d 'local model to serve by default (default smollm2-135m)'
complete -c pensieve -n '__pensieve_in \'restart\'' -l engine -r -f -a 'auto mlx llamacpp upstream' -d 'inference engine (default auto; upstream forwards to upstream_url)'
complete -c pensieve -n '__pensieve_in \'restart\'' -l context-length -r -f -d 'cap the context window'
complete -c pensieve -n '__pensieve_in \'restart\'' -l parallel -r -f -d 'requests generated together (default 0: auto, 2 on llama.cpp where memory allows)'
complete -c pensieve -n '__pensieve_in \'restart\'' -l log-level -r -f -a 'debug info warning error' -d 'how much the server logs (default info)'
complete -c pensieve -n '__pensieve_in \'restart\'' -l timeout -r -f -d 'seconds to wait for the stop'
complete -c pensieve -n '__pensieve_in \'restart\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'restart\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'status\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'status\'' -l json -d 'print the status as JSON'
complete -c pensieve -n '__pensieve_in \'status\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'status\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'logs\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'logs\'' -s f -l follow -d 'keep printing new lines until Ctrl-C'
complete -c pensieve -n '__pensieve_in \'logs\'' -s n -l lines -r -f -d 'lines to print (default 50)'
complete -c pensieve -n '__pensieve_in \'logs\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'logs\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'doctor\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'doctor\'' -l json -d 'print the report as JSON'
complete -c pensieve -n '__pensieve_in \'doctor\'' -l claude -d 'also run the real `claude --print "Say hello in 5 words"` against the server'
complete -c pensieve -n '__pensieve_in \'doctor\'' -l no-load -d 'do not load the model when the server is not serving it (faster)'
complete -c pensieve -n '__pensieve_in \'doctor\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'doctor\'' -s q -l quiet -d 'only errors and requested data'

complete -c pensieve -n '__pensieve_at \'models\' 1' -a list -d 'installed models; * marks the default'
complete -c pensieve -n '__pensieve_at \'models\' 1' -a info -d 'everything about one installed model'
complete -c pensieve -n '__pensieve_at \'models\' 1' -a rm -d 'delete an installed model from disk'
complete -c pensieve -n '__pensieve_at \'models\' 1' -a default -d 'choose the model that answers by default'
complete -c pensieve -n '__pensieve_at \'models\' 1' -a import -d 'add a GGUF file or an MLX folder that is already on disk'
complete -c pensieve -n '__pensieve_at \'models\' 1' -a map -d 'which local model answers each Claude tier (opus, sonnet, haiku)'
complete -c pensieve -n '__pensieve_at \'models\' 1' -a pull -d 'download a model from the Hugging Face Hub'
complete -c pensieve -n '__pensieve_in \'models\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'models\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'models\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'models list\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'models list\'' -l json -d 'machine-readable output'
complete -c pensieve -n '__pensieve_in \'models list\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'models list\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'models info\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'models info\'' -l json -d 'machine-readable output'
complete -c pensieve -n '__pensieve_in \'models info\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'models info\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'models info\' 1' -f -a '(__pensieve_models)'
complete -c pensieve -n '__pensieve_in \'models rm\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'models rm\'' -s y -l yes -d 'do not ask for confirmation'
complete -c pensieve -n '__pensieve_in \'models rm\'' -l force -d 'remove it even if it is the default model or a tier\'s'
complete -c pensieve -n '__pensieve_in \'models rm\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'models rm\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'models rm\' 1' -f -a '(__pensieve_models)'
complete -c pensieve -n '__pensieve_in \'models default\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'models default\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'models default\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'models default\' 1' -f -a '(__pensieve_models)'
complete -c pensieve -n '__pensieve_in \'models import\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'models import\'' -l name -r -f -d 'name in the store (default: from the file name)'
complete -c pensieve -n '__pensieve_in \'models import\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'models import\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'models import\' 1' -F
complete -c pensieve -n '__pensieve_in \'models map\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'models map\'' -l json -d 'machine-readable output'
complete -c pensieve -n '__pensieve_in \'models map\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'models map\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'models map\' 1' -f -a 'opus sonnet haiku'
complete -c pensieve -n '__pensieve_at \'models map\' 2' -f -a '(__pensieve_models)'
complete -c pensieve -n '__pensieve_in \'models pull\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'models pull\'' -l revision -r -f -d 'branch, tag or commit (default: main)'
complete -c pensieve -n '__pensieve_in \'models pull\'' -l name -r -f -d 'name in the store (default: the alias or the file name)'
complete -c pensieve -n '__pensieve_in \'models pull\'' -s y -l yes -d 'do not ask before downloading'
complete -c pensieve -n '__pensieve_in \'models pull\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'models pull\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'models pull\' 1' -f -a 'qwen2.5-coder-1.5b qwen2.5-coder-7b qwen2.5-coder-14b qwen3-4b qwen3-8b qwen3-30b-a3b phi-3-mini'

complete -c pensieve -n '__pensieve_at \'config\' 1' -a path -d 'print the config file\'s path'
complete -c pensieve -n '__pensieve_at \'config\' 1' -a get -d 'print one setting\'s value'
complete -c pensieve -n '__pensieve_at \'config\' 1' -a set -d 'store a setting in the config file'
complete -c pensieve -n '__pensieve_at \'config\' 1' -a unset -d 'remove a setting from the config file (back to default)'
complete -c pensieve -n '__pensieve_at \'config\' 1' -a list -d 'every setting with its value and where it came from'
complete -c pensieve -n '__pensieve_in \'config\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'config\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'config\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'config path\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'config path\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'config path\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'config get\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'config get\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'config get\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'config get\' 1' -f -a 'host port auth_token default_model engine tiers.opus tiers.sonnet tiers.haiku temperature repeat_penalty context_policy context_length max_body_bytes max_messages max_tools queue_size parallel threads compute_threads prefix_cache_bytes disk_cache_bytes ping_interval allowed_origins log_level upstream_url upstream_api_key upstream_model upstream_api upstream_context_length upstream_timeout'
complete -c pensieve -n '__pensieve_in \'config set\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'config set\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'config set\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'config set\' 1' -f -a 'host port auth_token default_model engine tiers.opus tiers.sonnet tiers.haiku temperature repeat_penalty context_policy context_length max_body_bytes max_messages max_tools queue_size parallel threads compute_threads prefix_cache_bytes disk_cache_bytes ping_interval allowed_origins log_level upstream_url upstream_api_key upstream_model upstream_api upstream_context_length upstream_timeout'
complete -c pensieve -n '__pensieve_at \'config set\' 2; and __pensieve_after \'default_model\' \'tiers.opus\' \'tiers.sonnet\' \'tiers.haiku\'' -f -a '(__pensieve_models)'
complete -c pensieve -n '__pensieve_at \'config set\' 2; and __pensieve_after \'engine\'' -f -a 'auto mlx llamacpp upstream'
complete -c pensieve -n '__pensieve_at \'config set\' 2; and __pensieve_after \'context_policy\'' -f -a 'auto fit strict'
complete -c pensieve -n '__pensieve_at \'config set\' 2; and __pensieve_after \'log_level\'' -f -a 'debug info warning error'
complete -c pensieve -n '__pensieve_at \'config set\' 2; and __pensieve_after \'upstream_api\'' -f -a 'openai anthropic'
complete -c pensieve -n '__pensieve_in \'config unset\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'config unset\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'config unset\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'config unset\' 1' -f -a 'host port auth_token default_model engine tiers.opus tiers.sonnet tiers.haiku temperature repeat_penalty context_policy context_length max_body_bytes max_messages max_tools queue_size parallel threads compute_threads prefix_cache_bytes disk_cache_bytes ping_interval allowed_origins log_level upstream_url upstream_api_key upstream_model upstream_api upstream_context_length upstream_timeout'
complete -c pensieve -n '__pensieve_in \'config list\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'config list\'' -l json -d 'machine-readable output'
complete -c pensieve -n '__pensieve_in \'config list\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'config list\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'claude-env\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'claude-env\'' -l shell -d 'export KEY=\'VALUE\' lines for eval in sh, bash or zsh'
complete -c pensieve -n '__pensieve_in \'claude-env\'' -l json -d 'one JSON object'
complete -c pensieve -n '__pensieve_in \'claude-env\'' -l port -r -f -d 'port of the server (default: the configured one)'
complete -c pensieve -n '__pensieve_in \'claude-env\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'claude-env\'' -s q -l quiet -d 'only errors and requested data'

complete -c pensieve -n '__pensieve_at \'cache\' 1' -a info -d 'where the states are, how much disk they use and the limit'
complete -c pensieve -n '__pensieve_at \'cache\' 1' -a list -d 'every saved state, most recently used first'
complete -c pensieve -n '__pensieve_at \'cache\' 1' -a clear -d 'delete every saved state (the next long prompt is computed again)'
complete -c pensieve -n '__pensieve_in \'cache\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'cache\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'cache\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'cache info\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'cache info\'' -l json -d 'machine-readable output'
complete -c pensieve -n '__pensieve_in \'cache info\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'cache info\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'cache list\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'cache list\'' -l json -d 'machine-readable output'
complete -c pensieve -n '__pensieve_in \'cache list\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'cache list\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'cache clear\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'cache clear\'' -l json -d 'machine-readable output'
complete -c pensieve -n '__pensieve_in \'cache clear\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'cache clear\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_in \'completions\'' -s h -l help -d 'show this help message and exit'
complete -c pensieve -n '__pensieve_in \'completions\'' -l write -r -f -a '(__fish_complete_directories (commandline -ct))' -d 'write the script into DIR under the name the shell looks for, instead of printing it'
complete -c pensieve -n '__pensieve_in \'completions\'' -s v -l verbose -d 'more output; tracebacks on errors'
complete -c pensieve -n '__pensieve_in \'completions\'' -s q -l quiet -d 'only errors and requested data'
complete -c pensieve -n '__pensieve_at \'completions\' 1' -f -a 'bash zsh fish'
