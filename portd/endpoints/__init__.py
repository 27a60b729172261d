"""Where sockets live: one grammar, one small protocol, one module per kind.

* ``base``: the protocol every kind implements (Endpoint, Address, Peer, SocketOptions).
* ``parse``: the grammar; a scheme prefix (``unix:``, ``tcp:``, ``udp:``) picks the kind.
* ``inet`` / ``inet_sockets``: ``[HOST:]PORT`` over IPv4 and IPv6, and their sockets.
* ``unix`` / ``unix_paths``: unix-domain sockets, and the rules for their files.

Nothing outside this package branches on a kind: config, reload, socket activation,
units, listeners and the testing API ask the endpoint.
"""

from __future__ import annotations

from portd.endpoints.base import PROTOCOLS, Address, Endpoint, Peer, ProtocolName, SocketOptions
from portd.endpoints.parse import parse_endpoint

__all__ = [
    "PROTOCOLS",
    "Address",
    "Endpoint",
    "Peer",
    "ProtocolName",
    "SocketOptions",
    "parse_endpoint",
]
