"""A dead worker's slot waits longer each time it dies soon after starting, up to a cap,
and from the start again once a worker served for a while."""

from __future__ import annotations

import itertools

from portd.workers.pool import RESTART_MAX_S, RESTART_STABLE_S, RESTART_START_S, Backoff


def test_the_wait_doubles_while_workers_die_young_up_to_the_cap() -> None:
    backoff = Backoff()
    delays = [backoff.next_delay(0.1) for _ in range(12)]
    assert delays[:3] == [RESTART_START_S, RESTART_START_S * 2, RESTART_START_S * 4]
    assert delays[-1] == RESTART_MAX_S
    assert all(later >= earlier for earlier, later in itertools.pairwise(delays))


def test_a_worker_that_served_long_enough_starts_the_wait_over() -> None:
    backoff = Backoff()
    for _ in range(5):
        backoff.next_delay(0.0)
    assert backoff.next_delay(RESTART_STABLE_S) == RESTART_START_S
