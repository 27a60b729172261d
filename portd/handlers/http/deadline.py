"""One deadline per connection on one timer, moved on the data path without rescheduling.

A keep-alive connection moves its deadline on every request; rescheduling a timer each
time would cost more than the request. The timer is rescheduled only when the deadline
must come sooner; when it fires early it re-arms for the deadline as it stands then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of the event loop a deadline needs: time and one-shot timers."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...


def _ignore() -> None:
    """What a cancelled deadline calls, should its timer still fire."""


class Deadline:
    """Calls ``on_expiry`` once the clock passes ``when`` (which may move either way)."""

    __slots__ = ("_clock", "_on_expiry", "_timer", "_timer_at", "when")

    def __init__(self, clock: Clock, on_expiry: Callable[[], None], when: float) -> None:
        self._clock = clock
        self._on_expiry = on_expiry
        self._timer: TimerHandle | None = None
        self._timer_at = 0.0
        self.when = when
        self._schedule(when)

    def move(self, when: float) -> None:
        """Expire at ``when`` instead."""
        self.when = when
        if self._timer is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._schedule(when)

    def cancel(self) -> None:
        """Never expire (and drop the callback, which may hold its owner)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_expiry = _ignore

    def _schedule(self, when: float) -> None:
        self._timer = self._clock.call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer = None
        if self._clock.time() < self.when:
            self._schedule(self.when)
        else:
            self._on_expiry()
