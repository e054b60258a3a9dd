"""Settings for a CLI command: the resolved config plus this command's flags, as one CliError on failure."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from pensieve_server.settings import Settings, load_settings


def settings_from_args(args: argparse.Namespace, flags: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings with ``flags`` mapping setting names to argparse attributes (None = not given)."""
    overrides: dict[str, Any] = {}
    for setting, attribute in (flags or {}).items():
        overrides[setting] = getattr(args, attribute, None)
    return load_settings(overrides)  # a ConfigError exits with USAGE (main.exit_statuses)
