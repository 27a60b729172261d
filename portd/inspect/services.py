"""Service names from /etc/services (through the C library), both ways."""

from __future__ import annotations

import socket

from portd.binds import PROTOCOLS, Protocol
from portd.errors import ServiceNotFoundError

WELL_KNOWN_END = 1024
REGISTERED_END = 49152


def service_name(port: int, protocol: Protocol) -> str | None:
    """The /etc/services name of ``port``/``protocol``, or None."""
    try:
        return socket.getservbyport(port, protocol)
    except (OSError, OverflowError):
        return None


def port_range(port: int) -> str:
    """IANA's range: well-known (< 1024), registered (< 49152) or dynamic."""
    if port < WELL_KNOWN_END:
        return "well-known"
    return "registered" if port < REGISTERED_END else "dynamic"


def lookup(query: str) -> list[tuple[str, int, Protocol]]:
    """``http`` -> [("http", 80, "tcp")]; ``80`` -> the same; both protocols where listed.

    Raises:
        ServiceNotFoundError: nothing matches.
    """
    found: list[tuple[str, int, Protocol]] = []
    for protocol in PROTOCOLS:
        if query.isascii() and query.isdigit():
            name = service_name(int(query), protocol)
            if name is not None:
                found.append((name, int(query), protocol))
            continue
        try:
            port = socket.getservbyname(query, protocol)
        except (OSError, ValueError):
            continue
        found.append((service_name(port, protocol) or query, port, protocol))  # alias -> name
    if not found:
        raise ServiceNotFoundError(f"no service {query!r} in /etc/services")
    return found
