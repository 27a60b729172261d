"""inetd's internal services: discard (RFC 863), chargen (RFC 864), daytime (RFC 867) and
time (RFC 868), over TCP and UDP (echo, RFC 862, is its own module).

TCP: discard reads and drops; chargen sends the RFC's rotating pattern until the client
goes, only as fast as it reads (a client that never reads costs a kernel buffer, then
``send_timeout_s`` cuts it); daytime and time send their answer and close.

UDP answers must not make portd an amplifier for a spoofed source, so by default:
datagrams from source ports below 1024 are dropped (the listener's
``allow_low_source_ports``), each source gets at most ``datagram_rate`` datagrams a
second (10, bursts of 20: these handlers' defaults), discard never answers, daytime and
time answer with their fixed, small size, and chargen (up to 512 bytes for any
datagram, an empty one too) is refused at load unless ``allow_amplification = true``,
and then answers each source at most ``reply_rate`` times a second.
"""

from __future__ import annotations

import random
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from portd.endpoints.base import Peer, ProtocolName
from portd.handlers.base import Connection, DatagramEndpoint, Handler, StreamSession
from portd.limits import RefusalLog, TokenBucket, source_bucket
from portd.options import Option, Settings

PRINTABLE = bytes(range(32, 127))  # the 95 printing ASCII characters, space first
LINE_CHARACTERS = 72
CHARGEN_UDP_MAX = 512
# RFC 864: line n holds 72 characters starting at the nth printing character; 95 lines
# make a full turn of the pattern, so whole turns can be sent back to back.
TURN = b"".join(
    (PRINTABLE * 2)[start : start + LINE_CHARACTERS] + b"\r\n" for start in range(len(PRINTABLE))
)
CHARGEN_CHUNK = TURN * 9  # 63,270 bytes: whole turns, each chunk continues the pattern
CHUNKS_PER_TURN_OF_THE_LOOP = 4  # then other connections get the loop
SECONDS_1900_TO_1970 = 2_208_988_800  # RFC 868
UDP_LIMITS: Mapping[str, Any] = {"datagram_rate": 10.0, "datagram_burst": 20}


def daytime_line(now: float) -> bytes:
    """RFC 867's suggested syntax, in UTC: ``Tuesday, February 22, 1982 17:37:43-UTC``."""
    stamp = time.gmtime(now)
    return time.strftime("%A, %B %d, %Y %H:%M:%S-UTC\r\n", stamp).encode("ascii")


def time_bytes(now: float) -> bytes:
    """RFC 868: seconds since 1900-01-01 00:00 UTC, 32 bits big-endian (it wraps in 2036)."""
    return struct.pack("!I", (int(now) + SECONDS_1900_TO_1970) % (1 << 32))


class _InternalHandler(Handler):
    """What the four share: TCP and UDP, per-source datagram rates on by default, a
    wall clock tests can replace."""

    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp", "udp"})
    default_limits: ClassVar[Mapping[str, Any]] = UDP_LIMITS
    clock: Callable[[], float] = staticmethod(time.time)


class DiscardHandler(_InternalHandler):
    """RFC 863: everything received is dropped; nothing is ever sent."""

    name = "discard"
    default_limits: ClassVar[Mapping[str, Any]] = {**UDP_LIMITS, "idle_timeout_s": 60.0}

    def open_session(self, conn: Connection) -> StreamSession:
        return StreamSession()  # reads and drops; the peer's FIN closes

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        return


class _AnswerAndClose(StreamSession):
    def __init__(self, conn: Connection, answer: bytes) -> None:
        conn.write(answer)
        conn.close()


class DaytimeHandler(_InternalHandler):
    """RFC 867: the date and time as a line, then close (UDP: one line per datagram)."""

    name = "daytime"

    def open_session(self, conn: Connection) -> StreamSession:
        return _AnswerAndClose(conn, daytime_line(self.clock()))

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        endpoint.send(daytime_line(self.clock()), peer)


class TimeHandler(_InternalHandler):
    """RFC 868: four bytes of seconds since 1900, then close (UDP: per datagram)."""

    name = "time"

    def open_session(self, conn: Connection) -> StreamSession:
        return _AnswerAndClose(conn, time_bytes(self.clock()))

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        endpoint.send(time_bytes(self.clock()), peer)


class ChargenSession(StreamSession):
    """Sends the pattern while the client reads; what it sends is read and dropped."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.paused = False
        self.scheduled: Any = None
        self._fill()

    def _fill(self) -> None:
        self.scheduled = None
        conn = self.conn
        for _ in range(CHUNKS_PER_TURN_OF_THE_LOOP):
            if self.paused or conn.is_closing():
                return
            conn.write(CHARGEN_CHUNK)
        if not self.paused:  # the client keeps up: more on the next turn of the loop
            self.scheduled = conn.clock.call_later(0, self._fill)

    def eof_received(self) -> bool:
        return True  # RFC 864: the pattern goes on until the client closes

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.scheduled is None:
            self._fill()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.scheduled is not None:
            self.scheduled.cancel()
            self.scheduled = None


class ChargenHandler(_InternalHandler):
    """RFC 864 over TCP (flow-controlled) and, with ``allow_amplification``, UDP."""

    name = "chargen"
    options = (
        Option("allow_amplification", bool, False, "UDP: answer datagrams with up to 512 "
               "bytes, more than they hold (a spoofed source makes portd flood its victim)"),
        Option("reply_rate", float, 10.0, "UDP: answers per second per source",
               minimum=0.001, maximum=1e6),
    )  # fmt: skip

    @classmethod
    def check_protocol(cls, settings: Settings, protocol: ProtocolName) -> list[str]:
        """chargen over UDP amplifies: it must be asked for."""
        if protocol == "udp" and not settings.get("allow_amplification"):
            return [
                "chargen over UDP answers any datagram, an empty one too, with up to 512 "
                "bytes: a spoofed source would make portd flood its victim; set "
                "allow_amplification = true to serve it (answers stay rate-limited per "
                "source: reply_rate)"
            ]
        return []

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._held_back: RefusalLog | None = None
        self._random = random.Random()  # noqa: S311 - a length, not a secret

    def open_session(self, conn: Connection) -> StreamSession:
        return ChargenSession(conn)

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        bucket = source_bucket(self._buckets, peer.source, self.settings["reply_rate"], 0)
        if not bucket.take():
            if self._held_back is None:
                self._held_back = RefusalLog(endpoint.log, "reply_dropped")
            self._held_back.refused("reply_rate", str(peer))
            return
        endpoint.send(TURN[: self._random.randint(0, CHARGEN_UDP_MAX)], peer)

    def close(self) -> None:
        if self._held_back is not None:
            self._held_back.flush()
