"""Who answers a Messages request: the local engines (:mod:`.local`) or an upstream server (:mod:`.upstream`).

:func:`make_provider` chooses once, at start, from ``settings.engine``; nothing downstream asks again.
"""

from __future__ import annotations

from pensieve_server.engine.pool import ModelPool
from pensieve_server.providers.base import ModelStatus, Prepared, Provider
from pensieve_server.settings import Settings
from pensieve_server.upstream import is_upstream


def make_provider(settings: Settings, pool: ModelPool) -> Provider:
    """The upstream provider when ``engine = "upstream"``, else the local one over ``pool``."""
    if is_upstream(settings):
        from pensieve_server.providers.upstream import UpstreamProvider

        return UpstreamProvider(settings)
    from pensieve_server.providers.local import LocalProvider

    return LocalProvider(settings, pool)


__all__ = ["ModelStatus", "Prepared", "Provider", "make_provider"]
