"""echo: every byte back to its sender (RFC 862), over TCP and UDP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from portd.endpoints.base import Peer, ProtocolName
from portd.handlers.base import Connection, DatagramEndpoint, Handler, StreamSession


class EchoSession(StreamSession):
    """Writes back what it reads, and stops reading while the peer is not reading."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.write(data)

    def pause_writing(self) -> None:
        self.conn.pause_reading()

    def resume_writing(self) -> None:
        self.conn.resume_reading()


class EchoHandler(Handler):
    """TCP echo with flow control; UDP echo that never sends more than it received."""

    name = "echo"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp", "udp"})
    # A silent peer holds a connection (and a max_connections slot) until this passes;
    # nginx closes idle clients after 60 s too. idle_timeout_s = 0 turns it off.
    default_limits: ClassVar[Mapping[str, Any]] = {"idle_timeout_s": 60.0}

    def open_session(self, conn: Connection) -> StreamSession:
        return EchoSession(conn)

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        endpoint.send(data, peer)
