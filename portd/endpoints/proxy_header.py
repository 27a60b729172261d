"""The PROXY protocol header (haproxy's v1 text and v2 binary) a forward sends its
upstream first, so the upstream sees the real client and the address it connected to.

An IP client gets ``TCP4``/``TCP6`` (v1) or ``PROXY`` with its family (v2); any other
kind of peer (a unix socket's) has no address to tell: ``UNKNOWN`` (v1) or ``LOCAL``
(v2), which upstreams read as "use the connection's own addresses".
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PROXY, V2_LOCAL = 0x21, 0x20  # version 2 with the PROXY or LOCAL command
V2_TCP4, V2_TCP6, V2_UNSPEC = 0x11, 0x21, 0x00
VERSIONS = ("v1", "v2")


def proxy_header(version: str, peer: Any, sockname: Any) -> bytes:
    """The header for a client ``peer`` that connected to ``sockname``.

    Args:
        version: ``v1`` or ``v2``.
        peer: the connection's typed peer.
        sockname: the accepted socket's local address (getsockname()).
    """
    addresses = _ip_pair(peer, sockname)
    if version == "v1":
        if addresses is None:
            return b"PROXY UNKNOWN\r\n"
        (source, source_port), (destination, destination_port) = addresses
        name = "TCP4" if source.version == 4 else "TCP6"
        line = f"PROXY {name} {source} {destination} {source_port} {destination_port}\r\n"
        return line.encode("ascii")
    if addresses is None:
        return V2_SIGNATURE + struct.pack("!BBH", V2_LOCAL, V2_UNSPEC, 0)
    (source, source_port), (destination, destination_port) = addresses
    body = source.packed + destination.packed + struct.pack("!HH", source_port, destination_port)
    family = V2_TCP4 if source.version == 4 else V2_TCP6
    return V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, family, len(body)) + body


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_pair(
    peer: Any, sockname: Any
) -> tuple[tuple[IpAddress, int], tuple[IpAddress, int]] | None:
    if getattr(peer, "kind", None) != "inet" or not isinstance(sockname, tuple):
        return None
    source = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    destination = ipaddress.ip_address(str(sockname[0]).split("%", 1)[0])
    if source.version != destination.version:
        return None
    return (source, int(peer[1])), (destination, int(sockname[1]))
