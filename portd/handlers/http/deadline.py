"""One deadline per connection, moved on the data path without rescheduling, and one
timer for the first deadline of every connection of a handler.

A keep-alive connection moves its deadline on every request; rescheduling a timer each
time would cost more than the request. The timer is rescheduled only when the deadline
must come sooner; when it fires early it re-arms for the deadline as it stands then.

Every connection starts with the same deadline (``header_timeout_s`` after the
connect), so those first deadlines expire in the order they were set: they wait in
one queue behind one timer (FirstDeadlines) instead of a timer each, which cost more
than the rest of opening a connection. A deadline leaves the queue for a timer of its
own only when it must come sooner (the next request's deadline is shorter).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

COMPACT_SLACK = 1024  # entries of ended deadlines tolerated before the queue is rebuilt


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of the event loop a deadline needs: time and one-shot timers."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...


def _ignore() -> None:
    """What a cancelled deadline calls, should its timer still fire."""


class FirstDeadlines:
    """Deadlines set ``delay`` after their start, in the order they were set (so in the
    order they expire), behind one timer of ``clock``.

    Entries of deadlines that left (cancelled, moved sooner) stay until popped; the
    queue is rebuilt when they outnumber the live ones, so it holds at most twice the
    connections waiting for their first head, plus COMPACT_SLACK.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.queue: deque[tuple[float, Deadline]] = deque()
        self.live = 0
        self.timer: TimerHandle | None = None

    def add(self, deadline: Deadline, when: float) -> None:
        """Expire ``deadline`` at ``when`` (never before any deadline added earlier)."""
        self.queue.append((when, deadline))
        self.live += 1
        if self.timer is None:
            self.timer = self.clock.call_at(when, self._fire)
        elif len(self.queue) > 2 * self.live + COMPACT_SLACK:
            self.queue = deque(entry for entry in self.queue if entry[1].queued is self)

    def _fire(self) -> None:
        self.timer = None
        now = self.clock.time()
        queue = self.queue
        while queue and queue[0][0] <= now:
            _, deadline = queue.popleft()
            if deadline.queued is self:
                self.live -= 1
                deadline.queued = None
                deadline.fire()
        if queue:
            self.timer = self.clock.call_at(queue[0][0], self._fire)


class Deadline:
    """Calls ``on_expiry`` once the clock passes ``when`` (which may move either way)."""

    __slots__ = ("_clock", "_on_expiry", "_timer", "_timer_at", "queued", "when")

    def __init__(
        self,
        clock: Clock,
        on_expiry: Callable[[], None],
        when: float,
        first: FirstDeadlines | None = None,
    ) -> None:
        """``first``: the queue of first deadlines to wait in instead of a timer (every
        deadline in it must be set the same delay after its start)."""
        self._clock = clock
        self._on_expiry = on_expiry
        self._timer: TimerHandle | None = None
        self._timer_at = when
        self.when = when
        self.queued = first  # waiting in this queue instead of a timer of its own
        if first is not None:
            first.add(self, when)
        else:
            self._schedule(when)

    def move(self, when: float) -> None:
        """Expire at ``when`` instead."""
        self.when = when
        if when >= self._timer_at and (self._timer is not None or self.queued is not None):
            return  # the timer fires first and re-arms for the deadline as it stands then
        self._leave()
        self._schedule(when)

    def cancel(self) -> None:
        """Never expire (and drop the callback, which may hold its owner)."""
        self._leave()
        self._on_expiry = _ignore

    def _leave(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.queued is not None:
            self.queued.live -= 1
            self.queued = None

    def _schedule(self, when: float) -> None:
        self._timer = self._clock.call_at(when, self.fire)
        self._timer_at = when

    def fire(self) -> None:
        """The timer (or the queue) reached ``_timer_at``: expire, or wait on."""
        self._timer = None
        if self._clock.time() < self.when:
            self._schedule(self.when)
        else:
            self._on_expiry()
