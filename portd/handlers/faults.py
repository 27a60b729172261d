"""Fault handlers that end or starve connections: blackhole, stall, reset, close-after.

They exist so clients can be tested against servers that misbehave on purpose:

* ``blackhole`` accepts and never reads or answers: the peer's writes fill the
  kernel's buffers and then block; its reads time out. UDP datagrams are dropped.
  (On uvloop, which resumes reading after ``connection_made`` whatever it was told
  there, the first chunk that arrives is read and dropped.)
* ``stall`` accepts and reads (and drops) everything, and never answers, not even to
  the peer's EOF: a request is taken and its response never comes.
* ``reset`` ends the connection with a TCP RST (the peer sees ``ConnectionResetError``),
  at once or after ``after_bytes``.
* ``close-after`` ends it with a clean close (FIN) after ``after_bytes``: a response
  cut short, or an upload refused midway.

``reset`` and ``close-after`` serve through ``wraps`` (echo or http-hello) until the
limit: ``counting = "sent"`` counts the bytes the inner handler writes (cut exactly at
the limit), ``"received"`` the bytes the peer sends (the inner handler sees no more).
A port that refuses connections is not a handler (nothing may listen); see
``portd.testing`` (``serve("refuse")``).
"""

from __future__ import annotations

from typing import ClassVar

from portd.endpoints.base import Peer, ProtocolName
from portd.handlers.base import Connection, DatagramEndpoint, Handler, StreamSession
from portd.handlers.wrapping import (
    WRAPS_OPTION,
    ConnectionProxy,
    SessionProxy,
    WrappingHandler,
)
from portd.options import Option, parse_size

COUNTING = ("sent", "received")


class BlackholeSession(StreamSession):
    """Stops reading at once and never writes."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        conn.pause_reading()

    def data_received(self, data: bytes) -> None:
        # uvloop starts reading once connection_made returns, whatever it was told
        # there: stop again at its first read (that one chunk is dropped).
        self.conn.pause_reading()


class BlackholeHandler(Handler):
    """Accepts and never reads or answers; drops UDP datagrams."""

    name = "blackhole"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp", "udp"})

    def open_session(self, conn: Connection) -> StreamSession:
        return BlackholeSession(conn)

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        """Dropped: no reply, ever."""


class StallSession(StreamSession):
    """Reads and drops everything; keeps the connection open after the peer's EOF."""

    def eof_received(self) -> bool:
        return True  # never answer, never close: the peer waits for a response


class StallHandler(Handler):
    """Accepts, reads, never answers."""

    name = "stall"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})

    def open_session(self, conn: Connection) -> StreamSession:
        return StallSession()


AFTER_BYTES_OPTION = Option(
    "after_bytes",
    object,
    0,
    'bytes before the connection ends (0: at once); an integer or "64KiB"',
    convert=parse_size,
)
COUNTING_OPTION = Option(
    "counting",
    str,
    "sent",
    "which bytes after_bytes counts: sent (replies) or received",
    choices=COUNTING,
)


class CutoffConnection(ConnectionProxy):
    """Lets ``limit`` bytes of replies through (counting sent), then ends the connection."""

    def __init__(self, conn: Connection, limit: int | None, resets: bool) -> None:
        super().__init__(conn)
        self.left = limit  # None: replies are not counted
        self.resets = resets
        self.ended = False

    def write(self, data: bytes) -> None:
        if self.ended:
            return
        if self.left is None or len(data) < self.left:
            if self.left is not None:
                self.left -= len(data)
            self.conn.write(data)
            return
        self.conn.write(data[: self.left])
        self.left = 0
        self.end()

    def end(self) -> None:
        """The limit was reached: FIN after what is queued, or RST now."""
        if self.ended:
            return
        self.ended = True
        if self.resets:
            self.conn.reset()
        else:
            self.conn.close()

    def write_eof(self) -> None:
        if not self.ended:
            self.conn.write_eof()

    def close(self) -> None:
        if not self.ended:
            self.conn.close()


class CutoffSession(SessionProxy):
    """Passes at most ``limit`` received bytes on (counting received), then ends."""

    def __init__(self, inner: StreamSession, conn: CutoffConnection, limit: int | None) -> None:
        super().__init__(inner)
        self.conn = conn
        self.left = limit  # None: received bytes are not counted

    def data_received(self, data: bytes) -> None:
        if self.conn.ended:
            return
        if self.left is None or len(data) < self.left:
            if self.left is not None:
                self.left -= len(data)
            self.inner.data_received(data)
            return
        if self.left:
            self.inner.data_received(data[: self.left])
        self.left = 0
        self.conn.end()


class CutoffHandler(WrappingHandler):
    """Serves through ``wraps`` until ``after_bytes``, then ends the connection."""

    resets: ClassVar[bool] = False
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})
    options = (WRAPS_OPTION, AFTER_BYTES_OPTION, COUNTING_OPTION)

    def open_session(self, conn: Connection) -> StreamSession:
        limit: int = self.settings["after_bytes"]
        counting_sent = self.settings["counting"] == "sent"
        proxy = CutoffConnection(conn, limit if counting_sent else None, self.resets)
        session = CutoffSession(
            self.inner.open_session(proxy), proxy, None if counting_sent else limit
        )
        if limit == 0:
            proxy.end()
        return session


class ResetHandler(CutoffHandler):
    """Sends RST at once, or after ``after_bytes`` served through ``wraps``."""

    name = "reset"
    resets = True


class CloseAfterHandler(CutoffHandler):
    """Closes cleanly (FIN) after ``after_bytes`` served through ``wraps``."""

    name = "close-after"


class RefuseHandler(Handler):
    """A port guaranteed to refuse: bound (so nobody else takes it), never listening.

    The kernel answers every connect with RST (ConnectionRefusedError); no connection
    ever reaches portd, so no session exists.
    """

    name = "refuse"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})
    listens = False
