"""The endpoint grammar: a scheme prefix selects a kind, ``[HOST:]PORT`` is the default.

=======================  ===================================================
``[HOST:]PORT``          inet (see portd.endpoints.inet), the listener's protocol
``tcp:[HOST:]PORT``      inet over TCP, said explicitly
``udp:[HOST:]PORT``      inet over UDP, said explicitly
``unix:/run/app.sock``   a unix-domain socket file
``unix:@name``           a Linux abstract-namespace unix socket
=======================  ===================================================

A prefix wins over a host of the same name (``tcp:80`` is port 80 over TCP, never the
host ``tcp``).
"""

from __future__ import annotations

import socket
from typing import Any

from portd.endpoints.base import PROTOCOLS, ProtocolName
from portd.errors import BindSyntaxError

SCHEMES = ("unix", "tcp", "udp")


def address_of(family: int, name: Any) -> tuple[str, Any] | None:
    """``(kind, Address)`` of a socket address as the kernel gives it (getsockname(),
    getpeername(), an inherited socket's), or None for a family no kind serves (or an
    unnamed unix socket)."""
    if family in (socket.AF_INET, socket.AF_INET6):
        from portd.endpoints.inet import InetAddress

        return "inet", InetAddress(socket.AddressFamily(family), name)
    if family == socket.AF_UNIX and name:
        from portd.endpoints.unix import unix_address

        return "unix", unix_address(name)
    return None


def parse_endpoint(
    text: str, protocol: ProtocolName | None = None, *, absolute_paths: bool = False
) -> Any:
    """Parse an endpoint.

    Args:
        text: as the user wrote it.
        protocol: the listener's protocol when it was stated (config ``protocol``, ``-u``);
            None lets a ``tcp:``/``udp:`` prefix decide, tcp otherwise.
        absolute_paths: refuse relative file paths (config files: the daemon's working
            directory is no anchor).

    Returns:
        The endpoint (an InetEndpoint or a UnixEndpoint).

    Raises:
        BindSyntaxError: the text fits no kind's grammar, or its prefix contradicts
            ``protocol``.
    """
    if not isinstance(text, str):
        raise BindSyntaxError("expected a bind such as 127.0.0.1:8080 or unix:/run/app.sock")
    scheme, sep, rest = text.partition(":")
    if sep and scheme in PROTOCOLS:
        if protocol is not None and protocol != scheme:
            raise BindSyntaxError(
                f"bad bind {text!r}; it says {scheme} but the protocol is {protocol}"
            )
        from portd.endpoints.inet import parse_inet

        return parse_inet(rest, scheme)
    if sep and scheme == "unix":
        from portd.endpoints.unix import parse_unix

        return parse_unix(rest, protocol or "tcp", absolute=absolute_paths)
    from portd.endpoints.inet import parse_inet

    return parse_inet(text, protocol or "tcp")
