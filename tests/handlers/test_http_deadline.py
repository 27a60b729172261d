"""Deadlines: the first of every connection waits in one queue behind one timer, leaves
it for a timer of its own only to come sooner, and ended ones never pile up."""

from __future__ import annotations

from functools import partial

from portd.handlers.http.deadline import COMPACT_SLACK, Deadline, FirstDeadlines
from portd.testing import ManualClock


def test_first_deadlines_expire_in_order_behind_one_timer() -> None:
    clock = ManualClock()
    first = FirstDeadlines(clock)
    expired: list[int] = []
    for index in range(5):
        Deadline(clock, partial(expired.append, index), clock.time() + 10, first)
        clock.advance(1)
    assert len([t for t in clock.timers if not t.cancelled]) == 1
    clock.advance(5)  # 10 s after the first start, 6 after the last
    assert expired == [0]
    clock.advance(4)
    assert expired == [0, 1, 2, 3, 4]


def test_a_deadline_moved_later_waits_on_and_one_moved_sooner_gets_its_own_timer() -> None:
    clock = ManualClock()
    first = FirstDeadlines(clock)
    expired: list[str] = []
    later = Deadline(clock, lambda: expired.append("later"), clock.time() + 10, first)
    sooner = Deadline(clock, lambda: expired.append("sooner"), clock.time() + 10, first)
    later.move(clock.time() + 15)
    sooner.move(clock.time() + 2)
    assert (later.queued, sooner.queued) == (first, None)
    clock.advance(2)
    assert expired == ["sooner"]
    clock.advance(8)  # the queue fires at 10 and re-arms the later one for 15
    assert expired == ["sooner"]
    clock.advance(5)
    assert expired == ["sooner", "later"]


def test_cancelled_first_deadlines_never_fire_and_the_queue_stays_bounded() -> None:
    clock = ManualClock()
    first = FirstDeadlines(clock)
    fired: list[int] = []
    live = [Deadline(clock, lambda: fired.append(1), clock.time() + 10, first) for _ in range(3)]
    for _ in range(10 * COMPACT_SLACK):
        Deadline(clock, lambda: fired.append(0), clock.time() + 10, first).cancel()
    assert first.live == 3
    assert len(first.queue) <= 2 * first.live + COMPACT_SLACK + 1
    clock.advance(10)
    assert fired == [1, 1, 1]
    assert all(deadline.queued is None for deadline in live)
