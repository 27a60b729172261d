"""Fault handlers that shape replies in time: latency, bandwidth, slicer.

Each serves through ``wraps`` (echo or http-hello) and holds what the inner handler
writes in a queue that a pacer releases on the event loop's clock:

* ``latency`` releases every reply ``delay_s`` (plus up to ``jitter_s``) after it was
  written, in order;
* ``bandwidth`` releases ``bytes_per_s`` on average, in pieces of about 10 ms worth;
* ``slicer`` releases replies in pieces of 1 to ``piece_bytes`` bytes, ``delay_s``
  (plus up to ``jitter_s``) apart, so a client reads a reply in many small parts.

The pacer does a bounded amount of work per turn of the event loop: at most
PIECES_PER_TURN pieces, then it yields (a timer due at once) even when more are due,
so ``slicer`` with ``delay_s = 0`` cannot hold the loop; a piece is cut from its reply
as a memoryview, never by copying the rest of the reply.

Random timings and piece sizes come from a ``random.Random`` seeded by ``seed`` and the
connection's number, so a run repeats exactly. Flow control holds end to end: the
queue is bounded (above QUEUE_HIGH_BYTES the inner session is told to pause writing,
which makes echo stop reading), and nothing is released while the kernel's send
buffer is full.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import ClassVar, Protocol

from portd.endpoints.base import ProtocolName
from portd.handlers.base import Connection, StreamSession
from portd.handlers.wrapping import (
    SEED_OPTION,
    WRAPS_OPTION,
    ConnectionProxy,
    SessionProxy,
    WrappingHandler,
)
from portd.options import Option, parse_size

QUEUE_HIGH_BYTES = 64 * 1024
QUEUE_LOW_BYTES = 16 * 1024
BANDWIDTH_TICK_S = 0.01  # a bandwidth piece carries about this much time's worth
MAX_PIECE_BYTES = 64 * 1024
CATCH_UP_S = 0.05  # a pacer running late may catch up this much, never bank idle time
PIECES_PER_TURN = 64  # then the pacer yields to the loop, even with pieces still due
EOF = "eof"  # markers queue as text among the bytes, so no payload can pass for one
CLOSE = "close"


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the pacer needs from the event loop (a fake one in unit tests)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...


class Pacing(Protocol):
    """When a reply may go, and in what pieces."""

    def release_at(self, now: float) -> float:
        """The earliest time a reply written at ``now`` may start to go out."""

    def take(self, available: int) -> tuple[int, float]:
        """How many of ``available`` bytes to send now, and the pause before the next piece."""


class PacedConnection(ConnectionProxy):
    """Holds the inner session's writes and releases them as the pacing allows.

    Markers for write_eof and close queue behind the data, so they happen in order.
    """

    def __init__(self, conn: Connection, clock: Clock, pacing: Pacing) -> None:
        super().__init__(conn)
        self.pace_clock = clock
        self.pacing = pacing
        self.session: StreamSession = StreamSession()  # the inner one, set by the handler
        self.queue: deque[tuple[float, memoryview | str]] = deque()
        self.queued_bytes = 0
        self.next_at = 0.0
        self.timer: TimerHandle | None = None
        self.kernel_full = False  # the real transport asked us to pause
        self.inner_paused = False
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.closing or not data:
            return
        self.queue.append((self.pacing.release_at(self.pace_clock.time()), memoryview(data)))
        self.queued_bytes += len(data)
        self.pump()
        if self.queued_bytes > QUEUE_HIGH_BYTES and not self.inner_paused:
            self.inner_paused = True
            self.session.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.queued_bytes + self.conn.get_write_buffer_size()

    def write_eof(self) -> None:
        self._mark(EOF)

    def close(self) -> None:
        self._mark(CLOSE)

    def _mark(self, marker: str) -> None:
        if self.closing:
            return
        self.closing = marker == CLOSE
        self.queue.append((self.pace_clock.time(), marker))
        self.pump()

    def abort(self) -> None:
        self.stop()
        self.conn.abort()

    def reset(self, reason: str = "") -> None:
        self.stop()
        self.conn.reset(reason)

    def stop(self) -> None:
        """Drop the queue and the timer (the connection is gone or aborted)."""
        self.closing = True
        self.queue.clear()
        self.queued_bytes = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def on_timer(self) -> None:
        self.timer = None
        self.pump()

    def pump(self) -> None:
        """Release whatever is due; arm the timer for the rest."""
        if self.timer is not None:
            return
        now = self.pace_clock.time()
        pieces = 0
        while self.queue and not self.kernel_full:
            release_at, item = self.queue[0]
            due = max(release_at, self.next_at)
            if due > now or pieces == PIECES_PER_TURN:
                self.timer = self.pace_clock.call_at(max(due, now), self.on_timer)
                return
            pieces += 1
            if isinstance(item, str):
                self.queue.popleft()
                if item == EOF:
                    self.conn.write_eof()
                else:
                    self.conn.close()
                continue
            self._send_piece(now, release_at, item)
        if self.inner_paused and self.queued_bytes <= QUEUE_LOW_BYTES:
            self.inner_paused = False
            self.session.resume_writing()

    def _send_piece(self, now: float, release_at: float, item: memoryview) -> None:
        size, gap_s = self.pacing.take(len(item))
        if size >= len(item):
            self.queue.popleft()
        else:
            self.queue[0] = (release_at, item[size:])
        self.queued_bytes -= size
        start = self.next_at if self.next_at > now - CATCH_UP_S else now
        self.next_at = start + gap_s
        self.conn.write(bytes(item[:size]))  # the piece alone is copied


class PacedSession(SessionProxy):
    """The server's session: the kernel's back-pressure stops the pacer, not the inner."""

    def __init__(self, inner: StreamSession, paced: PacedConnection) -> None:
        super().__init__(inner)
        self.paced = paced

    def eof_received(self) -> bool:
        if not self.inner.eof_received():
            self.paced.close()  # after the queued replies, not before
        return True

    def pause_writing(self) -> None:
        self.paced.kernel_full = True

    def resume_writing(self) -> None:
        self.paced.kernel_full = False
        self.paced.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.paced.stop()
        self.inner.connection_lost(exc)


class PacingHandler(WrappingHandler):
    """Serves through ``wraps`` with every reply paced by :meth:`make_pacing`."""

    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})

    def make_pacing(self, rng: random.Random) -> Pacing:
        """The pacing of one connection."""
        raise NotImplementedError

    def open_session(self, conn: Connection) -> StreamSession:
        return self.open_paced(conn, conn.clock)

    def open_paced(self, conn: Connection, clock: Clock) -> PacedSession:
        """A session on any clock (unit tests pass a fake one)."""
        paced = PacedConnection(conn, clock, self.make_pacing(self.next_random()))
        paced.session = self.inner.open_session(paced)
        return PacedSession(paced.session, paced)


class Delay:
    """Every reply waits ``delay_s`` plus a uniform draw from [0, ``jitter_s``]."""

    def __init__(self, delay_s: float, jitter_s: float, rng: random.Random) -> None:
        self.delay_s, self.jitter_s, self.rng = delay_s, jitter_s, rng

    def release_at(self, now: float) -> float:
        jitter = self.rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0
        return now + self.delay_s + jitter

    def take(self, available: int) -> tuple[int, float]:
        return available, 0.0


class Throttle:
    """Pieces of about BANDWIDTH_TICK_S worth, each followed by its time at the rate."""

    def __init__(self, bytes_per_s: int) -> None:
        self.bytes_per_s = bytes_per_s
        self.piece = min(max(1, round(bytes_per_s * BANDWIDTH_TICK_S)), MAX_PIECE_BYTES)

    def release_at(self, now: float) -> float:
        return now

    def take(self, available: int) -> tuple[int, float]:
        size = min(available, self.piece)
        return size, size / self.bytes_per_s


class Slices:
    """Pieces of 1 to ``piece_bytes`` bytes, ``delay_s`` plus up to ``jitter_s`` apart."""

    def __init__(
        self, piece_bytes: int, delay_s: float, jitter_s: float, rng: random.Random
    ) -> None:
        self.piece_bytes = piece_bytes
        self.delay_s, self.jitter_s, self.rng = delay_s, jitter_s, rng

    def release_at(self, now: float) -> float:
        return now

    def take(self, available: int) -> tuple[int, float]:
        size = min(available, self.rng.randint(1, self.piece_bytes))
        jitter = self.rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0
        return size, self.delay_s + jitter


def _seconds(name: str, default: float, help_text: str) -> Option:
    return Option(name, float, default, help_text, minimum=0, maximum=3600)


class LatencyHandler(PacingHandler):
    """Delays every reply."""

    name = "latency"
    options = (
        WRAPS_OPTION,
        _seconds("delay_s", 0.1, "delay added to every reply"),
        _seconds("jitter_s", 0.0, "plus a random delay from 0 to this"),
        SEED_OPTION,
    )

    def make_pacing(self, rng: random.Random) -> Pacing:
        return Delay(self.settings["delay_s"], self.settings["jitter_s"], rng)


class BandwidthHandler(PacingHandler):
    """Throttles replies to ``bytes_per_s``."""

    name = "bandwidth"
    options = (
        WRAPS_OPTION,
        Option(
            "bytes_per_s",
            object,
            100_000,
            'replies per second, in bytes: an integer or "64KiB"',
            convert=lambda value: _at_least_one(parse_size(value)),
        ),
    )

    def make_pacing(self, rng: random.Random) -> Pacing:
        return Throttle(self.settings["bytes_per_s"])


def _at_least_one(size: int) -> int:
    from portd.errors import OptionError

    if size < 1:
        raise OptionError("expected at least 1 byte per second")
    return size


class SlicerHandler(PacingHandler):
    """Delivers replies in small pieces."""

    name = "slicer"
    options = (
        WRAPS_OPTION,
        Option("piece_bytes", int, 1, "largest piece; each is 1 to this many bytes", minimum=1),
        _seconds("delay_s", 0.001, "pause between pieces"),
        _seconds("jitter_s", 0.0, "plus a random pause from 0 to this"),
        SEED_OPTION,
    )

    def make_pacing(self, rng: random.Random) -> Pacing:
        settings = self.settings
        return Slices(settings["piece_bytes"], settings["delay_s"], settings["jitter_s"], rng)
