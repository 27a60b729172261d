"""recorder: accepts, keeps what each peer sends, and optionally answers with a fixed reply.

Under ``portd.testing`` every connection's bytes (up to ``max_bytes``) land in its
ConnectionRecord and every datagram in a DatagramRecord. In the daemon the kept bytes
go to the log at debug level (``connection_recorded``: size, sha256, the first bytes),
since there is no test to hand them to.

``reply`` is sent once per connection (TCP) at ``reply_after``: ``connect``, the first
``data``, or the peer's ``eof``; then the connection closes if ``close_after_reply``
(always after ``eof``). Bytes past ``max_bytes`` are read and counted (``bytes_in``)
but not kept, so a peer cannot make the server grow.

Over UDP every datagram is answered with ``reply`` when set, under echo's rule against
amplification (a spoofed source would have portd flood its victim): a reply larger than
the datagram it answers is not sent (counted and logged as ``reply_dropped``) unless
``amplify = true``, and then each source gets at most ``reply_rate`` replies a second.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

from portd.endpoints.base import Peer, ProtocolName
from portd.handlers.base import Connection, DatagramEndpoint, Handler, StreamSession
from portd.limits import RefusalLog, TokenBucket, source_bucket
from portd.options import Option, Settings, parse_size

REPLY_AFTER = ("connect", "data", "eof")
LOG_HEAD_BYTES = 64


class RecorderSession(StreamSession):
    """Keeps the first ``max_bytes`` received; answers once."""

    def __init__(self, conn: Connection, handler: RecorderHandler) -> None:
        self.conn = conn
        self.handler = handler
        self.kept = bytearray()
        self.replied = False
        if handler.reply_after == "connect":
            self._reply()

    @property
    def received(self) -> bytes:
        """What the peer sent, up to the handler's ``max_bytes``."""
        return bytes(self.kept)

    def data_received(self, data: bytes) -> None:
        room = self.handler.max_bytes - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        if self.handler.reply_after == "data":
            self._reply()

    def eof_received(self) -> bool:
        if self.handler.reply_after == "eof" and self.handler.reply and not self.replied:
            self.replied = True
            self.conn.write(self.handler.reply)
        return False

    def _reply(self) -> None:
        if self.replied or not self.handler.reply:
            return
        self.replied = True
        self.conn.write(self.handler.reply)
        if self.handler.close_after_reply:
            self.conn.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.log.debug(
            "connection_recorded",
            kept=len(self.kept),
            sha256=hashlib.sha256(self.kept).hexdigest(),
            head=bytes(self.kept[:LOG_HEAD_BYTES]),
        )


class RecorderHandler(Handler):
    """Records every connection's bytes and every datagram; replies when asked to."""

    name = "recorder"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp", "udp"})
    # A silent peer holds a connection (and a max_connections slot) until this passes;
    # nginx closes idle clients after 60 s too. idle_timeout_s = 0 turns it off.
    default_limits: ClassVar[Mapping[str, Any]] = {"idle_timeout_s": 60.0}
    options = (
        Option("reply", str, "", "sent once per connection (UTF-8); empty: never reply"),
        Option(
            "reply_after",
            str,
            "data",
            "when to reply: on connect, after the first data, or at the peer's eof",
            choices=REPLY_AFTER,
        ),
        Option("close_after_reply", bool, False, "close once the reply is sent"),
        Option(
            "max_bytes",
            object,
            1 << 20,
            'bytes kept per connection: an integer or "16MiB"',
            convert=parse_size,
        ),
        Option(
            "amplify",
            bool,
            False,
            "UDP: send the reply even when it is larger than the datagram it answers",
        ),
        Option(
            "reply_rate",
            float,
            10.0,
            "UDP with amplify: replies per second per source",
            minimum=0.001,
            maximum=1e6,
        ),
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.reply: bytes = settings["reply"].encode("utf-8")
        self.reply_after: str = settings["reply_after"]
        self.close_after_reply: bool = settings["close_after_reply"]
        self.max_bytes: int = settings["max_bytes"]
        self.amplify: bool = settings.get("amplify", False)
        self.reply_rate: float = settings.get("reply_rate", 10.0)
        self._reply_buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._dropped: RefusalLog | None = None

    def open_session(self, conn: Connection) -> StreamSession:
        return RecorderSession(conn, self)

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        if not self.reply:
            return
        reason = self._hold_back(data, peer)
        if reason is None:
            endpoint.send(self.reply, peer)
            return
        if self._dropped is None:
            self._dropped = RefusalLog(endpoint.log, "reply_dropped")
        self._dropped.refused(reason, str(peer))

    def _hold_back(self, data: bytes, peer: Peer) -> str | None:
        """Why the reply to ``data`` must not go, or None."""
        if not self.amplify:
            return "larger_than_request" if len(self.reply) > len(data) else None
        rate = self.reply_rate
        bucket = source_bucket(self._reply_buckets, peer.source, rate, 0)
        return None if bucket.take() else "reply_rate"

    def close(self) -> None:
        if self._dropped is not None:
            self._dropped.flush()
