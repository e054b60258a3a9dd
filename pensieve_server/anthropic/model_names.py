"""Claude model names → local models, so Claude Code works unchanged whatever model it asks for.

Claude Code sends real Anthropic ids (``claude-opus-4-8``, ``claude-sonnet-4-5-20250929``,
``claude-3-5-haiku-latest``, sometimes with a ``[1m]`` context suffix). Each maps by tier
(opus / sonnet / haiku) to a local model through the configured tier map, falling back to the
default model. Local names are always served as themselves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pensieve_server.anthropic.errors import NotFound
from pensieve_server.settings import TIERS

# "claude" as a whole segment, also behind provider prefixes (anthropic.claude-…, us.anthropic.claude-…).
_CLAUDE = re.compile(r"(?:^|[./:])claude(?:[-_.@:]|$)")
_SUFFIX = re.compile(r"\[[^\[\]]*\]$")


def _bare(name: str) -> str:
    """``name`` without surrounding space and a trailing ``[1m]``-style option, lower-cased."""
    return _SUFFIX.sub("", name.strip()).strip().lower()


def is_claude_name(name: str) -> bool:
    """True for Anthropic model ids and the bare tier aliases ``opus`` / ``sonnet`` / ``haiku``."""
    bare = _bare(name)
    return bare in TIERS or _CLAUDE.search(bare) is not None


def tier_of(name: str) -> str | None:
    """The tier of a Claude model name (``opus``, ``sonnet``, ``haiku``); None for anything else."""
    if not is_claude_name(name):
        return None
    bare = _bare(name)
    return next((tier for tier in TIERS if tier in bare), None)


def _local_match(requested: str, local_names: list[str]) -> str | None:
    if requested in local_names:
        return requested
    wanted = requested.strip().casefold()
    matches = [name for name in local_names if name.casefold() == wanted]
    return matches[0] if len(matches) == 1 else None


def resolve_model_name(requested: str, local_names: list[str], tiers: Mapping[str, str], default: str) -> str:
    """The local model that serves ``requested``.

    A local name (exact, else unambiguous case-insensitive) is itself; a Claude name goes through
    its tier (``tiers[tier]``, else ``default``); an unknown Claude family goes to ``default``.
    Raises :class:`NotFound` naming the available models for anything else.
    """
    local = _local_match(requested, local_names)
    if local is not None:
        return local
    if is_claude_name(requested):
        tier = tier_of(requested)
        chosen = (tiers.get(tier) if tier else None) or default
        if chosen:
            return chosen
        raise NotFound(
            f"model: {requested} (no local model is configured for it; set a default model or pull one "
            f"with `pensieve models pull`)"
        )
    available = ", ".join(local_names) if local_names else "none; pull one with `pensieve models pull`"
    raise NotFound(f"model: {requested} (available: {available}; any claude-* name maps to a local model)")
