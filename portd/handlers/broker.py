"""broker and chat (ncat's ``--broker`` and ``--chat``): what a client sends goes to every
other client of the listener.

``broker`` passes bytes as they come; ``chat`` passes lines, each prefixed with the
sender's name (``<user3> hello``), and announces who joins and leaves.

The slow-consumer policy is explicit, and the others always go on (ncat stalls every
client behind the slowest; websocat drops messages without a word):

- every client has a bounded queue, ``max_buffer_bytes``; a message that would overflow
  it disconnects that client at once (an RST);
- a client that reads nothing for the listener's ``send_timeout_s`` (10 s by default
  here) is disconnected too;
- either way one ``slow_consumer_disconnected`` warning names it (``reason``:
  ``buffer_full`` or ``send_timeout``), and a chat tells the others.

Senders are never paused for a slow receiver, so memory stays at most
``max_buffer_bytes`` per client (plus the kernel's socket buffers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from portd.endpoints.base import ProtocolName
from portd.handlers.base import Connection, Handler, StreamSession
from portd.options import Option, Settings, parse_size

ANNOUNCE = b"<announce>"
BUFFER_OPTION = Option(
    "max_buffer_bytes", object, 1 << 20, 'queued for one client before it is dropped as a slow '
    'consumer: bytes, or "4MiB"', convert=parse_size,
)  # fmt: skip
SLOW_LIMITS: Mapping[str, Any] = {"send_timeout_s": 10.0}


class BrokerSession(StreamSession):
    """One client of a broker or chat."""

    def __init__(self, conn: Connection, handler: BrokerHandler) -> None:
        self.conn = conn
        self.handler = handler
        self.stalled = False  # its queue passed the high-water mark and has not drained
        self.dropped = False

    def data_received(self, data: bytes) -> None:
        self.handler.from_client(self, data)

    def eof_received(self) -> bool:
        return False  # done talking: it leaves (as in ncat), after what is queued for it

    def deliver(self, data: bytes) -> None:
        """Queue ``data`` for this client, or drop the client if its queue would overflow."""
        conn = self.conn
        if self.dropped or conn.is_closing():
            return
        if conn.get_write_buffer_size() + len(data) > self.handler.max_buffer:
            self.drop("buffer_full")
            return
        conn.write(data)

    def drop(self, reason: str) -> None:
        """Disconnect a slow consumer, saying so once."""
        if self.dropped:
            return
        self.dropped = True
        self.conn.log.warning(
            "slow_consumer_disconnected", reason=reason,
            queued=self.conn.get_write_buffer_size(),
        )  # fmt: skip
        if reason == "buffer_full":
            self.conn.reset(f"slow consumer: more than {self.handler.max_buffer} bytes queued")

    def pause_writing(self) -> None:
        self.stalled = True

    def resume_writing(self) -> None:
        self.stalled = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stalled and exc is None and not self.dropped:
            self.drop("send_timeout")  # portd cut it while its queue stayed full
        self.handler.left(self)


class BrokerHandler(Handler):
    """Every byte from one client to every other client (ncat --broker)."""

    name = "broker"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})
    options: ClassVar[tuple[Option, ...]] = (BUFFER_OPTION,)
    default_limits: ClassVar[Mapping[str, Any]] = SLOW_LIMITS

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.max_buffer: int = settings["max_buffer_bytes"]
        self.clients: dict[BrokerSession, None] = {}  # in joining order

    def open_session(self, conn: Connection) -> StreamSession:
        session = BrokerSession(conn, self)
        self.clients[session] = None
        return session

    def from_client(self, sender: BrokerSession, data: bytes) -> None:
        """Bytes a client sent: to all the others."""
        self.send_others(sender, data)

    def send_others(self, sender: BrokerSession | None, data: bytes) -> None:
        """``data`` to every client but ``sender``."""
        for client in list(self.clients):
            if client is not sender:
                client.deliver(data)

    def left(self, session: BrokerSession) -> None:
        """A client is gone."""
        self.clients.pop(session, None)


class ChatSession(BrokerSession):
    """A chat client: a name, and the part of a line it has not finished."""

    def __init__(self, conn: Connection, handler: ChatHandler, number: int) -> None:
        super().__init__(conn, handler)
        self.name = b"<user%d>" % number
        self.partial = bytearray()


class ChatHandler(BrokerHandler):
    """Lines from one client to the others, named after their sender (ncat --chat)."""

    name = "chat"
    options = (
        BUFFER_OPTION,
        Option("max_line_bytes", int, 4096, "a longer line is passed on in pieces this long",
               minimum=1, maximum=1 << 20),
    )  # fmt: skip

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.max_line: int = settings["max_line_bytes"]
        self.joined = 0

    def open_session(self, conn: Connection) -> StreamSession:
        self.joined += 1
        session = ChatSession(conn, self, self.joined)
        here = b", ".join(c.name for c in self.clients if isinstance(c, ChatSession))
        session.deliver(b"%s you are %s; here already: %s\n" % (ANNOUNCE, session.name,
                                                             here or b"nobody"))  # fmt: skip
        self.clients[session] = None
        peer = str(conn.peer).encode("utf-8", "replace")
        self.send_others(session, b"%s %s joined from %s\n" % (ANNOUNCE, session.name, peer))
        return session

    def from_client(self, sender: BrokerSession, data: bytes) -> None:
        """Whole lines go out, named; a partial line waits (up to max_line_bytes)."""
        assert isinstance(sender, ChatSession)
        sender.partial += data
        *lines, rest = bytes(sender.partial).split(b"\n")
        sender.partial[:] = rest
        while len(sender.partial) >= self.max_line:
            lines.append(bytes(sender.partial[: self.max_line]))
            del sender.partial[: self.max_line]
        if lines:
            self.send_others(sender, b"".join(self._line(sender, line) for line in lines))

    def _line(self, sender: ChatSession, line: bytes) -> bytes:
        return b"%s %s\n" % (sender.name, line.removesuffix(b"\r"))

    def left(self, session: BrokerSession) -> None:
        """Its unfinished line goes out, then who left (and why, for a slow consumer)."""
        super().left(session)
        assert isinstance(session, ChatSession)
        last = self._line(session, bytes(session.partial)) if session.partial else b""
        why = b" (disconnected: not reading)" if session.dropped else b""
        self.send_others(None, last + b"%s %s left%s\n" % (ANNOUNCE, session.name, why))
