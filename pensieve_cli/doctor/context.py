"""What every doctor check may look at, gathered once and shared by the checks that need it.

The installed model and the engine that runs it are worked out here, once, so that the engine, GPU
and load checks agree without passing results to each other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pensieve_server.settings import Settings

if TYPE_CHECKING:
    from pensieve_cli.claude_config import ClaudePaths
    from pensieve_server.models.store import ModelEntry


@dataclass
class Context:
    """What every check may look at, gathered once."""

    settings: Settings
    environ: Mapping[str, str]
    health: dict[str, Any] | None  # the Pensieve server answering on the configured port, if any
    load_model: bool = True

    @classmethod
    def create(cls, settings: Settings, environ: Mapping[str, str] | None = None, load_model: bool = True) -> Context:
        from pensieve_cli.daemon import health

        env = os.environ if environ is None else environ
        return cls(settings, env, health(settings.base_url), load_model)

    @property
    def claude_paths(self) -> ClaudePaths:
        from pensieve_cli.claude_config import ClaudePaths

        return ClaudePaths.resolve(self.environ)

    @cached_property
    def claude_settings(self) -> tuple[dict[str, Any] | None, str]:
        """settings.json's object, or None and why it cannot be used."""
        from pensieve_cli.claude_config import ConfigFileError, display, parse_json

        path = self.claude_paths.settings_json
        try:
            data, _ = parse_json(path.read_bytes(), path)
        except FileNotFoundError:
            return None, f"{display(path)} does not exist"
        except (OSError, ConfigFileError) as exc:
            return None, str(exc).split("; fix", 1)[0] if isinstance(exc, ConfigFileError) else str(exc)
        return data, ""

    def claude_env_file(self) -> dict[str, Any]:
        data, _ = self.claude_settings
        env = (data or {}).get("env", {})
        return env if isinstance(env, dict) else {}

    @cached_property
    def entry(self) -> ModelEntry | None:
        """The configured model's store entry, or None when it is not installed."""
        from pensieve_server.models.store import ModelError, ModelStore

        try:
            return ModelStore(self.settings.paths.models_dir).get(self.settings.default_model)
        except ModelError:
            return None

    @cached_property
    def engine_choice(self) -> tuple[str, str]:
        """``(engine, "")``: the engine that runs the model (``auto`` resolved); ``("", why)`` when none can."""
        from pensieve_server.engine.base import ModelLoadError
        from pensieve_server.engine.factory import resolve_engine

        try:
            return resolve_engine(self.settings.engine, self.entry), ""
        except ModelLoadError as exc:
            return "", str(exc)

    def served(self) -> bool:
        """Whether the running server already has the configured model loaded."""
        health = self.health or {}
        name = self.settings.default_model
        return name in (health.get("models_loaded") or []) or (health.get("model") == name and bool(health.get("engine")))
