"""The toxics as stages of one direction of a forwarded connection.

A stage takes items (``bytes``, or the markers :data:`EOF` and :data:`CLOSE`) with
:meth:`Stage.push` and hands them, in order, to the next stage or the sink through
``out``. Stages that wait (latency, bandwidth, slicer, slow_close) queue items and
release them on the connection's clock; the others act at once. Everything runs in
event-loop callbacks: no task per chunk, and a change of toxics is applied between two
chunks. A stage taken out of a live pipe gives back what it held (:meth:`detach`), so
no byte is lost or reordered unless the toxic itself says so (``timeout`` drops,
``limit_data`` and ``cut_after`` end the stream).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from portd.toxics.spec import Toxic

EOF = "eof"  # the source half-closed: markers are text, so no payload can pass for one
CLOSE = "close"  # close the whole connection once everything before it is delivered
Item = bytes | str
PIECES_PER_TURN = 64  # a queue releases at most this many pieces before yielding
CATCH_UP_S = 0.05  # a late queue may catch up this much, never bank idle time
BANDWIDTH_CATCH_UP_S = 0.25  # a starved loop must not cost a rate limit its accuracy
MAX_PIECE_BYTES = 1 << 20  # a bandwidth piece: 10 ms worth, at most this (100 MB/s: 1 MB)


class Ends(Protocol):
    """What a stage may do to its connection."""

    clock: Any  # time(), call_at(), call_later()

    @property
    def rng(self) -> random.Random:
        """The connection's random source (jitter, slice sizes)."""

    def reset_connection(self, reason: str) -> None:
        """RST both sides now."""

    def released(self) -> None:
        """A queue let bytes go: the pipe may resume its source."""


class Stage:
    """Passes every item on; subclasses change what, when and how much."""

    def __init__(self, toxic: Toxic, ends: Ends) -> None:
        self.toxic = toxic
        self.ends = ends
        self.out: Callable[[Item], None] = _nowhere
        self.held_bytes = 0
        self.timer: Any = None

    def start(self) -> None:
        """The stage joined a live pipe (timers that count from now start here)."""

    def push(self, item: Item) -> None:
        """Take one item."""
        self.out(item)

    def detach(self) -> list[Item]:
        """Leave the pipe: stop timers and give back what is held, oldest first."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return []


def _nowhere(item: Item) -> None:
    raise AssertionError("a stage pushed before it was linked")


class QueueStage(Stage):
    """Holds items and releases them as :meth:`release_at` and :meth:`take` allow."""

    catch_up_s = CATCH_UP_S

    def __init__(self, toxic: Toxic, ends: Ends) -> None:
        super().__init__(toxic, ends)
        self.queue: deque[tuple[float, Item]] = deque()
        self.next_at = 0.0
        self.last_release = 0.0

    def release_at(self, now: float, item: Item) -> float:
        """The earliest time ``item`` may start to go."""
        return now

    def take(self, available: int) -> tuple[int, float]:
        """How many of ``available`` bytes go now, and the pause before the next piece."""
        return available, 0.0

    def push(self, item: Item) -> None:
        now = self.ends.clock.time()
        # Never earlier than what is ahead of it: jitter must not reorder.
        self.last_release = max(self.release_at(now, item), self.last_release)
        self.queue.append((self.last_release, item))
        if isinstance(item, bytes):
            self.held_bytes += len(item)
        self.pump()

    def on_timer(self) -> None:
        self.timer = None
        self.pump()
        self.ends.released()

    def pump(self) -> None:
        """Release what is due; arm the timer for the rest."""
        if self.timer is not None:
            return
        clock = self.ends.clock
        now = clock.time()
        for _ in range(PIECES_PER_TURN):
            if not self.queue:
                return
            release_at, item = self.queue[0]
            due = max(release_at, self.next_at)
            if due > now:
                self.timer = clock.call_at(due, self.on_timer)
                return
            if isinstance(item, str):
                self.queue.popleft()
                self.out(item)
                continue
            self._send(now, release_at, item)
        self.timer = clock.call_at(now, self.on_timer)  # more is due: yield to the loop

    def _send(self, now: float, release_at: float, item: bytes) -> None:
        size, gap_s = self.take(len(item))
        if size >= len(item):
            self.queue.popleft()
            piece = item
        else:
            self.queue[0] = (release_at, item[size:])
            piece = item[:size]
        self.held_bytes -= len(piece)
        start = self.next_at if self.next_at > now - self.catch_up_s else now
        self.next_at = start + gap_s
        self.out(piece)

    def detach(self) -> list[Item]:
        super().detach()
        items = [item for _, item in self.queue]
        self.queue.clear()
        self.held_bytes = 0
        return items


class Latency(QueueStage):
    """Every chunk ``latency`` ms late, plus or minus up to ``jitter`` ms (toxiproxy)."""

    def release_at(self, now: float, item: Item) -> float:
        delay_ms = self.toxic["latency"]
        jitter_ms = self.toxic["jitter"]
        if jitter_ms:
            delay_ms += self.ends.rng.uniform(-jitter_ms, jitter_ms)
        return now + max(delay_ms, 0.0) / 1000


class Bandwidth(QueueStage):
    """``rate`` KB/s (1 KB = 1000 bytes, as toxiproxy), in pieces of about 10 ms worth."""

    catch_up_s = BANDWIDTH_CATCH_UP_S

    def take(self, available: int) -> tuple[int, float]:
        bytes_per_s = self.toxic["rate"] * 1000
        if bytes_per_s <= 0:
            return available, 0.0  # toxiproxy: rate 0 is no limit
        piece = int(min(max(1, bytes_per_s / 100), MAX_PIECE_BYTES))
        size = min(available, piece)
        return size, size / bytes_per_s


class Slicer(QueueStage):
    """Chunks cut into pieces of ``average_size`` +- ``size_variation`` bytes, ``delay``
    microseconds apart (toxiproxy)."""

    def take(self, available: int) -> tuple[int, float]:
        average = int(self.toxic["average_size"])
        if average <= 0:
            return available, 0.0
        variation = min(int(self.toxic["size_variation"]), average - 1)
        size = average + (self.ends.rng.randint(-variation, variation) if variation else 0)
        return min(available, max(size, 1)), self.toxic["delay"] / 1_000_000


class SlowClose(QueueStage):
    """Data as it comes; the half-close or close ``delay`` ms late."""

    def release_at(self, now: float, item: Item) -> float:
        return now if isinstance(item, bytes) else now + self.toxic["delay"] / 1000


class Timeout(Stage):
    """Drops every byte; closes the connection ``timeout`` ms after it applies (never
    with 0), as toxiproxy's ``timeout``."""

    def start(self) -> None:
        if self.toxic["timeout"] > 0:
            self.timer = self.ends.clock.call_later(self.toxic["timeout"] / 1000, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.out(CLOSE)

    def push(self, item: Item) -> None:
        if not isinstance(item, bytes):
            self.out(item)


class ResetPeer(Stage):
    """An RST both ways ``timeout`` ms after it applies (at once with 0)."""

    def start(self) -> None:
        self.timer = self.ends.clock.call_later(self.toxic["timeout"] / 1000, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.ends.reset_connection("reset_peer")


class LimitData(Stage):
    """Exactly ``bytes`` pass, then the connection closes (FIN both ways)."""

    def __init__(self, toxic: Toxic, ends: Ends) -> None:
        super().__init__(toxic, ends)
        self.left = int(toxic["bytes"])
        self.done = False

    def push(self, item: Item) -> None:
        if self.done:
            return
        if isinstance(item, bytes):
            if len(item) >= self.left:
                if self.left:
                    self.out(item[: self.left])
                self.left, self.done = 0, True
                self.out(CLOSE)
                return
            self.left -= len(item)
        self.out(item)


class CutAfter(Stage):
    """An RST both ways after ``after_bytes`` in its stream or ``after_s`` seconds."""

    def __init__(self, toxic: Toxic, ends: Ends) -> None:
        super().__init__(toxic, ends)
        self.left = int(toxic["after_bytes"]) or -1

    def start(self) -> None:
        if self.toxic["after_s"] > 0:
            self.timer = self.ends.clock.call_later(self.toxic["after_s"], self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.ends.reset_connection("cut_after")

    def push(self, item: Item) -> None:
        if isinstance(item, bytes) and self.left >= 0:
            if len(item) >= self.left:
                self.out(item[: self.left])
                self.ends.reset_connection("cut_after")
                return
            self.left -= len(item)
        self.out(item)


STAGES: dict[str, type[Stage]] = {
    "latency": Latency,
    "bandwidth": Bandwidth,
    "slicer": Slicer,
    "slow_close": SlowClose,
    "timeout": Timeout,
    "reset_peer": ResetPeer,
    "limit_data": LimitData,
    "cut_after": CutAfter,
}


def make_stage(toxic: Toxic, ends: Ends) -> Stage | None:
    """The stage of a stream toxic; None for those that act elsewhere (slow_open)."""
    kind = STAGES.get(toxic.type)
    return kind(toxic, ends) if kind is not None else None
