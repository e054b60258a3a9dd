"""Pensieve's own config.toml: merge settings into it without losing anything else in the file.

Used by ``pensieve config set|unset`` and ``pensieve models default|map``. Values are checked and
converted to their option's type first, so a bad value never reaches the file. The write is the same
as setup's (temp file in the same folder → fsync → atomic rename, mode 0600, through
:mod:`pensieve_cli.claude_config`), so a crash leaves either the old file or the new one. Keys this
version does not know are kept as they are: a newer Pensieve may have written them.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from typing import Any

import tomli_w

from pensieve_cli.claude_config import (
    RETRIES,
    ConfigFileError,
    atomic_write,
    check_writable,
    display,
    snapshot,
    target_of,
    toml_transform,
)
from pensieve_cli.errors import CliError
from pensieve_server.settings import OPTIONS_BY_NAME, ConfigError, Paths, coerce, read_config_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_MODE = 0o600  # may hold the API token or an upstream key


def read_values(paths: Paths) -> dict[str, Any]:
    """The file's settings as flat dotted keys (``tiers.haiku``); a missing file is empty."""
    return read_config_file(paths.config_file)


def convert(values: Mapping[str, object | None]) -> dict[str, Any]:
    """Each value as its option's type (None stays: remove); ConfigError names the key and the problem."""
    converted: dict[str, Any] = {}
    for key, value in values.items():
        option = OPTIONS_BY_NAME.get(key)
        if option is None:
            raise ConfigError(f"unknown setting {key!r} (see `pensieve config list`)")
        converted[key] = None if value is None else coerce(option, value, key)
    return converted


def _without(raw: bytes | None, keys: list[str], label: str) -> bytes | None:
    """The TOML text with ``keys`` removed (tables left empty go too); unchanged input when none was there."""
    if raw is None or not keys:
        return raw
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigFileError(f"{label} is not valid TOML ({exc}); fix or move it, then run again") from None
    merged = copy.deepcopy(data)
    for dotted in keys:
        *parents, leaf = dotted.split(".")
        tables = [merged]
        for name in parents:
            child = tables[-1].get(name)
            if not isinstance(child, dict):
                break
            tables.append(child)
        else:
            tables[-1].pop(leaf, None)
            for name, parent in zip(reversed(parents), reversed(tables[:-1]), strict=True):
                if parent.get(name) == {}:
                    del parent[name]  # `[tiers]` with nothing left in it
    return raw if merged == data else tomli_w.dumps(merged).encode("utf-8")


def set_values(paths: Paths, values: Mapping[str, object | None]) -> dict[str, Any]:
    """Merge ``values`` into config.toml (None: remove the key); returns the converted values written.

    Raises ConfigError for an unknown key or a bad value (nothing is written), ConfigFileError or
    CliError when the file cannot be read, parsed or written.
    """
    converted = convert(values)
    path = paths.config_file
    removals = [key for key, value in converted.items() if value is None]
    updates = {key: value for key, value in converted.items() if value is not None}
    try:
        target = target_of(path)
        for _attempt in range(RETRIES):
            snap = snapshot(target)
            after = toml_transform(path, updates)(_without(snap.data, removals, display(path)))
            if after == snap.data or (snap.data is None and not updates):
                return converted  # nothing changes: leave the file (or its absence) alone
            check_writable(path, target, snap)
            if snapshot(target) != snap:
                continue  # another program wrote it meanwhile: merge again on its version
            atomic_write(target, after or b"", CONFIG_MODE, snap.owner)
            return converted
        raise ConfigFileError(f"{display(path)} kept changing while Pensieve was writing it; try again")
    except OSError as exc:
        raise CliError(f"cannot write {display(path)}: {exc.strerror or exc}") from None
