"""The main thread's waits: a signal marked for Python but never delivered to the wait
still ends it."""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from portd.shell.threads import join_in_main, start_thread, wait_in_main


class SigintError(Exception):
    """What the test's SIGINT handler raises."""


def _raise_interrupted(_signum: int, _frame: object) -> None:
    raise SigintError


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT handled by Python (an xdist worker may ignore it, and then interrupt_main
    does nothing), restored afterwards."""
    previous = signal.signal(signal.SIGINT, _raise_interrupted)
    yield
    signal.signal(signal.SIGINT, previous)


def _blocked_in(thread_id: int, waiter: str) -> bool:
    """Whether that thread is inside threading's own code, called by ``waiter``."""
    frame = sys._current_frames().get(thread_id)
    innermost = frame.f_code.co_filename if frame is not None else ""
    names: list[str] = []
    while frame is not None and len(names) < 4:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return innermost == threading.__file__ and waiter in names


def _wait(event: threading.Event) -> None:
    wait_in_main(event)


def _join(event: threading.Event) -> None:
    join_in_main(start_thread(event.wait))


@pytest.mark.parametrize(("waiter", "wait"), [("wait_in_main", _wait), ("join_in_main", _join)])
def test_a_signal_that_missed_the_wait_still_ends_it(
    sigint_raises: None, waiter: str, wait: Callable[[threading.Event], None]
) -> None:
    """interrupt_main() marks SIGINT exactly as a signal that landed just before the wait
    does: the handler is due, and no EINTR ever wakes the lock. A bare Event.wait() (or
    join()) would sleep on until the rescue below sets the event."""
    event = threading.Event()
    rescued = threading.Event()
    main = threading.get_ident()

    def interrupt_then_rescue() -> None:
        deadline = time.monotonic() + 5.0
        while not _blocked_in(main, waiter) and time.monotonic() < deadline:
            time.sleep(0.001)
        _thread.interrupt_main()
        if not event.wait(5.0):
            rescued.set()
            event.set()

    start_thread(interrupt_then_rescue)  # it interrupts once this thread waits
    with pytest.raises(SigintError):
        wait(event)
    assert not rescued.is_set()
    event.set()  # ends the helper thread


def test_returns_once_the_event_is_set() -> None:
    event = threading.Event()
    start_thread(event.set)
    wait_in_main(event)
    assert event.is_set()
