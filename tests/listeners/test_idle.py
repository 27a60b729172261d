"""Idle timeouts in buckets behind one timer: never early, at most 1/32 late, activity
moves a connection on, an ended one is forgotten."""

from __future__ import annotations

from portd.listeners.idle import GRANULES_PER_TIMEOUT, IdleTimeouts
from portd.testing import ManualClock


class Quiet:
    """What IdleTimeouts needs of a connection: its last byte, and being cut."""

    def __init__(self, last_active: float) -> None:
        self.last_active = last_active
        self.idle_bucket: set[Quiet] | None = None
        self.cut_at: float | None = None
        self.clock: ManualClock | None = None

    def cut(self, ending: str) -> None:
        assert ending == "idle_timeout"
        assert self.clock is not None
        self.cut_at = self.clock.time()


def watched(clock: ManualClock, idle: IdleTimeouts) -> Quiet:
    conn = Quiet(clock.time())
    conn.clock = clock
    idle.watch(conn, conn.last_active)  # type: ignore[arg-type]
    return conn


def test_a_quiet_connection_is_cut_after_the_timeout_never_before_and_little_after() -> None:
    clock = ManualClock(now=1000.0)
    idle = IdleTimeouts(1.0, clock)
    conns = []
    for _ in range(50):
        conns.append(watched(clock, idle))
        clock.advance(0.013)
    clock.advance(2.0)
    for conn in conns:
        assert conn.cut_at is not None
        late = conn.cut_at - (conn.last_active + 1.0)
        assert 0 <= late <= 1.0 / GRANULES_PER_TIMEOUT + 1e-9
    assert len([t for t in clock.timers if not t.cancelled]) <= 1  # one timer, not fifty


def test_activity_moves_a_connection_on_and_an_ended_one_is_forgotten() -> None:
    clock = ManualClock(now=1000.0)
    idle = IdleTimeouts(1.0, clock)
    busy, gone = watched(clock, idle), watched(clock, idle)
    clock.advance(0.5)
    idle.forget(gone)  # type: ignore[arg-type]
    for _ in range(10):
        busy.last_active = clock.time()  # a byte every half second
        clock.advance(0.5)
    assert (busy.cut_at, gone.cut_at) == (None, None)
    clock.advance(1.1)
    assert busy.cut_at is not None
    assert gone.cut_at is None
