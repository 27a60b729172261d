"""Who holds a port: the process behind an address already in use.

The kernel's table is read through sock_diag with the states filtered in the kernel (a
TCP port is held by a listener or a bound socket, never by the 100,000 TIME-WAIT
entries a busy host has: psutil decoded them all, so a busy port took 8-12 s to be
reported there), then one pass over /proc finds the process holding that inode.
"""

from __future__ import annotations

import socket

from portd.endpoints.base import ProtocolName
from portd.endpoints.inet import InetAddress
from portd.errors import DiagnosisError
from portd.inspect.sockdiag import (
    ALL_STATES,
    BOUND_INACTIVE,
    LISTEN_STATES,
    InetSocket,
    inet_sockets,
)

ANY = ("0.0.0.0", "::")


def find_port_owner(protocol: ProtocolName, address: InetAddress) -> str | None:
    """Describe the process holding ``address`` for ``protocol``, when visible.

    Returns:
        ``"pid 123 (nginx)"``, ``"another user's process (run as root to see which)"``,
        or None when no holder is visible at all.
    """
    states = LISTEN_STATES | BOUND_INACTIVE if protocol == "tcp" else ALL_STATES
    try:
        entries = inet_sockets((protocol,), states)
    except DiagnosisError:
        return None
    for entry in entries:
        if entry.port == address.port and _overlaps(entry, address):
            return _describe(entry.inode)
    return None


def _overlaps(entry: InetSocket, address: InetAddress) -> bool:
    """Whether the kernel's socket ``entry`` covers the address asked for: the same
    address, a wildcard on either side, or a dual-stack ``::`` holding IPv4 too."""
    if entry.family != address.family:
        dual = entry.family == socket.AF_INET6 and entry.v6only is False
        return dual and entry.address == "::"
    return entry.address == address.host or entry.address in ANY or address.host in ANY


def _describe(inode: int) -> str:
    from portd.inspect.holders import Holders

    holders = Holders(wanted={inode}).of(inode)
    if not holders:
        return "another user's process (run as root to see which)"
    return f"pid {holders[0].pid} ({holders[0].program})"
