"""Idle timeouts of a listener's connections: buckets of time, one timer.

A timer per connection costs more memory than the rest of an idle connection (a uvloop
timer handle and libuv's timer: 0.65 KiB of the 2.5 an idle echo connection took).
Instead every watched connection sits in the bucket of the moment it would be idle for
``idle_timeout_s`` (buckets GRANULES_PER_TIMEOUT to a timeout, so a cut comes at most
1/32 of the timeout late, never early); one timer per listener fires at the earliest
bucket, cuts what was quiet long enough and moves the rest to the bucket their last
byte gives them. The data path only stores the time of the last byte.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from portd.listeners.stream import StreamConnection

GRANULES_PER_TIMEOUT = 32
MIN_GRANULE_S = 0.001


class IdleTimeouts:
    """The idle connections of one listener, cut after ``timeout_s`` without a byte."""

    def __init__(self, timeout_s: float, clock: Any) -> None:
        self.timeout_s = timeout_s
        self.granule_s = max(timeout_s / GRANULES_PER_TIMEOUT, MIN_GRANULE_S)
        self.clock = clock
        self.buckets: dict[int, set[StreamConnection]] = {}
        self.due: list[int] = []  # bucket numbers, earliest first (a heap)
        self.timer: Any = None

    def watch(self, conn: StreamConnection, last_active: float) -> None:
        """Cut ``conn`` once it has been quiet for the timeout since ``last_active``."""
        number = math.ceil((last_active + self.timeout_s) / self.granule_s)
        bucket = self.buckets.get(number)
        if bucket is None:
            bucket = self.buckets[number] = set()
            heapq.heappush(self.due, number)
            if self.timer is None:
                self.timer = self.clock.call_at(number * self.granule_s, self._fire)
        bucket.add(conn)
        conn.idle_bucket = bucket  # the set itself: no number object per connection

    def forget(self, conn: StreamConnection) -> None:
        """``conn`` ended: stop watching it."""
        if conn.idle_bucket is not None:
            conn.idle_bucket.discard(conn)
            conn.idle_bucket = None

    def _fire(self) -> None:
        self.timer = None
        now = self.clock.time()
        due = self.due
        while due and due[0] * self.granule_s <= now:
            for conn in self.buckets.pop(heapq.heappop(due), ()):
                conn.idle_bucket = None
                if now - conn.last_active >= self.timeout_s:
                    conn.cut("idle_timeout")
                else:
                    self.watch(conn, conn.last_active)
        if due and self.timer is None:
            self.timer = self.clock.call_at(due[0] * self.granule_s, self._fire)

    def close(self) -> None:
        """The listener is gone: no more checks (its connections were cut)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
