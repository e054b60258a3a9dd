"""Random ids shaped like the Anthropic API's (``msg_01…``, ``toolu_…``): base62 characters.

Drawn with :mod:`secrets`, not :mod:`random`: ids are shown to clients and must not be guessable.
"""

from __future__ import annotations

import secrets
import string

BASE62 = string.digits + string.ascii_letters


def random_base62(length: int) -> str:
    """``length`` unpredictable base62 characters."""
    return "".join(secrets.choice(BASE62) for _ in range(length))
