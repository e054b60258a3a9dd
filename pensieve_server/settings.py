"""Pensieve's own configuration, resolved once: defaults < TOML file < PENSIEVE_* env < flags.

The result is a frozen :class:`Settings` passed to everything that needs it, so nothing deeper
reads files or environment variables on its own (Flask app factory / mlx-lm ``ModelProvider`` style).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from pensieve_server.bind_policy import loopback_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP_NAME = "pensieve"
DEFAULT_MODEL = "smollm2-135m"
TIERS = ("opus", "sonnet", "haiku")


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the file or key."""


@dataclass(frozen=True)
class Paths:
    """Where Pensieve keeps its files. ``PENSIEVE_HOME`` puts all of them under one folder."""

    config_dir: Path
    data_dir: Path
    cache_dir: Path
    log_dir: Path
    run_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def token_file(self) -> Path:
        return self.config_dir / "token"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"

    @property
    def prefix_states_dir(self) -> Path:
        """Saved prefix (KV) states, so a restart does not prefill long prompts again."""
        return self.cache_dir / "prefix-states"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "server.json"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        home = env.get("PENSIEVE_HOME")
        if home:
            root = Path(home).expanduser().resolve()
            return cls(root / "config", root / "data", root / "cache", root / "logs", root / "run")
        return cls(
            Path(platformdirs.user_config_dir(APP_NAME)),
            Path(platformdirs.user_data_dir(APP_NAME)),
            Path(platformdirs.user_cache_dir(APP_NAME)),
            Path(platformdirs.user_log_dir(APP_NAME)),
            Path(platformdirs.user_runtime_dir(APP_NAME)) if sys.platform == "linux" and os.environ.get("XDG_RUNTIME_DIR")
            else Path(platformdirs.user_state_dir(APP_NAME)),
        )


@dataclass(frozen=True)
class Option:
    """One setting: its type, default, environment variable and a line of help."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def env_var(self) -> str:
        return "PENSIEVE_" + self.name.upper().replace(".", "_")


OPTIONS: tuple[Option, ...] = (
    Option("host", str, "127.0.0.1", "address the server binds to"),
    Option("port", int, 7777, "TCP port the server listens on"),
    Option("auth_token", str, "", "API token clients must send (empty: generated on first use and stored 0600)"),
    Option("default_model", str, DEFAULT_MODEL, "local model that answers when no tier mapping applies"),
    Option("engine", str, "auto", "inference engine (upstream: forward to upstream_url)",
           ("auto", "mlx", "llamacpp", "upstream")),
    Option("tiers.opus", str, "", "local model answering claude-*opus* names (empty: default model)"),
    Option("tiers.sonnet", str, "", "local model answering claude-*sonnet* names (empty: default model)"),
    Option("tiers.haiku", str, "", "local model answering claude-*haiku* names (empty: default model)"),
    Option("temperature", float, 0.2, "sampling temperature for requests that do not set one"),
    Option("repeat_penalty", float, 1.1, "penalty on recently generated tokens (1.0: off); keeps small models out of loops"),
    Option("context_policy", str, "auto", "what to do with prompts longer than the context", ("auto", "fit", "strict")),
    Option("context_length", int, 0, "cap on the context window in tokens (0: the model's own)"),
    Option("max_body_bytes", int, 32 * 1024 * 1024, "largest accepted request body"),
    Option("max_messages", int, 10_000, "most messages accepted in one request"),
    Option("max_tools", int, 1_000, "most tool definitions accepted in one request"),
    Option("queue_size", int, 16, "requests that may wait for the engine before 529 overloaded"),
    Option("parallel", int, 0, "requests generated together (continuous batching on llama.cpp and MLX; "
           "0: auto, 2 on llama.cpp where memory allows, so Claude Code's side requests never hold up a turn)"),
    Option("threads", int, 16, "HTTP worker threads (each open stream holds one)"),
    Option("compute_threads", int, 0, "CPU threads llama.cpp computes with (0: one per physical core; 2 when every layer is on a GPU)"),
    Option("prefix_cache_bytes", int, 0, "memory the saved prefix (KV) states may hold (0: 1/8 of free RAM, ≤ 2 GiB)"),
    Option("disk_cache_bytes", int, -1, "disk the saved prefix (KV) states may use across restarts "
           "(-1: 10% of free disk, ≤ 10 GiB; 0: off)"),
    Option("ping_interval", float, 10.0, "seconds between SSE pings while the prompt is processed"),
    Option("allowed_origins", str, "", "comma-separated browser Origins allowed to call the API"),
    Option("log_level", str, "info", "server log level", ("debug", "info", "warning", "error")),
    Option("upstream_url", str, "", "OpenAI- or Anthropic-compatible server to forward to (engine = upstream)"),
    Option("upstream_api_key", str, "", "API key sent to the upstream (secret: shown as a fingerprint)"),
    Option("upstream_model", str, "", "the upstream's model id (empty: the first one its /v1/models lists)"),
    Option("upstream_api", str, "openai", "what the upstream speaks", ("openai", "anthropic")),
    Option("upstream_context_length", int, 0, "the upstream model's context in tokens (0: unknown, no fitting)"),
    Option("upstream_timeout", float, 600.0, "seconds to wait for the upstream's next bytes before giving up"),
)
SECRET_OPTIONS = frozenset({"auth_token", "upstream_api_key"})  # shown only as fingerprints
OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def coerce(option: Option, raw: Any, source: str) -> Any:
    """Convert ``raw`` to the option's type, or raise ConfigError naming ``source``."""
    try:
        if option.type is bool and isinstance(raw, str):
            value: Any = raw.strip().lower() in ("1", "true", "yes", "on")
        elif option.type is int and isinstance(raw, bool):
            raise ValueError
        else:
            value = option.type(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {option.name} must be {option.type.__name__}, got {raw!r}") from None
    if option.choices and value not in option.choices:
        raise ConfigError(f"{source}: {option.name} must be one of {', '.join(option.choices)}, got {value!r}")
    if option.name == "port" and not 0 <= value <= 65535:
        raise ConfigError(f"{source}: port must be between 0 and 65535, got {value}")
    if option.name == "upstream_url" and value and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: upstream_url must be an http:// or https:// URL, got {value!r}")
    return value


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def read_config_file(path: Path) -> dict[str, Any]:
    """The config file as flat dotted keys; a missing file is empty, a broken one a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return _flatten(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _default(name: str) -> Any:
    """The default of setting ``name``: written once, in :data:`OPTIONS`."""
    return OPTIONS_BY_NAME[name].default


def parse_origins(text: str) -> tuple[str, ...]:
    """``allowed_origins``' comma-separated text as the Origins it allows."""
    return tuple(o.strip() for o in text.split(",") if o.strip())


@dataclass(frozen=True)
class Settings:
    """Every setting the server and CLI use, already resolved; each default comes from :data:`OPTIONS`."""

    paths: Paths
    host: str = _default("host")
    port: int = _default("port")
    auth_token: str = field(default=_default("auth_token"), repr=False)  # never in a repr that could reach a log
    default_model: str = _default("default_model")
    engine: str = _default("engine")
    tiers: Mapping[str, str] = field(default_factory=lambda: {t: _default(f"tiers.{t}") for t in TIERS})
    temperature: float = _default("temperature")
    repeat_penalty: float = _default("repeat_penalty")
    context_policy: str = _default("context_policy")
    context_length: int = _default("context_length")
    max_body_bytes: int = _default("max_body_bytes")
    max_messages: int = _default("max_messages")
    max_tools: int = _default("max_tools")
    queue_size: int = _default("queue_size")
    parallel: int = _default("parallel")  # auto: pensieve_server.engine.parallel
    threads: int = _default("threads")
    prefix_cache_bytes: int = _default("prefix_cache_bytes")
    disk_cache_bytes: int = _default("disk_cache_bytes")
    compute_threads: int = _default("compute_threads")
    ping_interval: float = _default("ping_interval")
    allowed_origins: tuple[str, ...] = parse_origins(_default("allowed_origins"))
    log_level: str = _default("log_level")
    upstream_url: str = _default("upstream_url")
    upstream_api_key: str = field(default=_default("upstream_api_key"), repr=False)  # a secret, like auth_token
    upstream_model: str = _default("upstream_model")
    upstream_api: str = _default("upstream_api")
    upstream_context_length: int = _default("upstream_context_length")
    upstream_timeout: float = _default("upstream_timeout")
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        host = loopback_for(self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def model_for_tier(self, tier: str) -> str:
        return self.tiers.get(tier) or self.default_model

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: defaults < config file < PENSIEVE_* env < ``overrides`` (CLI flags).

    ``None`` values in ``overrides`` mean "flag not given". The auth token, when empty
    everywhere, is read from the 0600 token file (see :mod:`pensieve_server.auth_token`).
    """
    env = os.environ if environ is None else environ
    paths = Paths.resolve(env)
    file_values = read_config_file(paths.config_file)
    unknown = sorted(set(file_values) - set(OPTIONS_BY_NAME))
    if unknown:
        raise ConfigError(f"{paths.config_file}: unknown setting {unknown[0]!r} (see `pensieve config list`)")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        value, source = option.default, "default"
        if option.name in file_values:
            value = coerce(option, file_values[option.name], str(paths.config_file))
            source = "file"
        if env.get(option.env_var, "") != "":
            value = coerce(option, env[option.env_var], option.env_var)
            source = "env"
        if overrides and overrides.get(option.name) is not None:
            value = coerce(option, overrides[option.name], "--" + option.name.replace("_", "-"))
            source = "flag"
        values[option.name] = value
        sources[option.name] = source
    if not values["auth_token"]:
        from pensieve_server.auth_token import read_token

        token = read_token(paths.token_file)
        if token:
            values["auth_token"] = token
            sources["auth_token"] = "token file"
    if values["engine"] == "upstream" and sources["default_model"] == "default":
        # Forwarding: the model answering Claude names is the upstream's, not the embedded one.
        values["default_model"] = values["upstream_model"] or "upstream"
    tiers = {tier: values.pop(f"tiers.{tier}") for tier in TIERS}
    origins = parse_origins(values.pop("allowed_origins"))
    return Settings(paths=paths, tiers=tiers, allowed_origins=origins, sources=sources, **values)
