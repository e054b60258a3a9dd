"""Where the server may listen: loopback freely, any other address only behind the API token.

On loopback only local processes reach the model, and the Host/Origin guard stops browsers being
used as a relay. Any other address (a LAN IP, ``0.0.0.0``, ``::``, a hostname) exposes it to the
network in plain HTTP, so it needs the token, and the user is told what they turned on.
"""

from __future__ import annotations

import ipaddress

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})  # every interface: the one list of them


class BindRefused(ValueError):
    """Binding this address would expose the model without a token; the message says what to do."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x).

    A hostname other than ``localhost`` may resolve anywhere, so it counts as exposed.
    """
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])  # drop an IPv6 zone id (fe80::1%eth0)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def loopback_for(host: str) -> str:
    """The address a local client connects to: loopback for a wildcard bind, ``host`` itself otherwise."""
    if host.strip() in WILDCARD_HOSTS:
        return "::1" if host.strip() == "::" else "127.0.0.1"
    return host


def describe(host: str) -> str:
    """How a bind address reads in messages (an empty host is every interface)."""
    name = host.strip()
    if name in WILDCARD_HOSTS:
        return f"all interfaces ({name})" if name else "all interfaces"
    return repr(host)


def check_bind(host: str, auth_token: str) -> str | None:
    """None when ``host`` is loopback; a warning to log when it is not and a token is set.

    Raises :class:`BindRefused` for a non-loopback address without a token: anyone who can reach
    the port could spend the machine's compute and read whatever the model is given.
    """
    if is_loopback(host):
        return None
    if not auth_token.strip():
        raise BindRefused(
            f"refusing to listen on {describe(host)} without an API token: anyone on the network could use "
            f"the model. Set auth_token (`pensieve config set auth_token ...` or PENSIEVE_AUTH_TOKEN), or bind "
            f"127.0.0.1 with --host 127.0.0.1"
        )
    return (
        f"listening on {describe(host)}: the server is reachable from other machines over plain HTTP; every "
        f"request must carry the API token (x-api-key or Authorization: Bearer). Use this only on a network "
        f"you trust."
    )
