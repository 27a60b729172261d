"""Background threads of the shell commands, started so that signals reach the main thread.

The kernel hands a process-directed signal (Ctrl-C's SIGINT, a SIGTERM) to any thread
that does not block it, and Python runs signal handlers only in the main thread. A main
thread parked in a lock wait (``Event.wait``) is woken by a signal delivered to it, not
by one delivered elsewhere: Ctrl-C that landed on the thread reading stdin did nothing.
Every thread here starts with the asynchronous signals blocked (a thread inherits its
creator's mask), so the kernel always picks the main thread.

The main thread itself waits with ``wait_in_main`` and ``join_in_main``, never with a bare
``Event.wait()`` or ``join()``: see there for the signal a blocking wait can miss.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

MAIN_THREAD_SIGNALS = frozenset(
    {
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGALRM,
        signal.SIGCHLD,
        signal.SIGWINCH,
    }
)

# How long a missed signal can wait for its handler (see wait_in_main): short enough that
# Ctrl-C never feels ignored, long enough that an idle wait costs nothing measurable.
SIGNAL_CHECK_S = 0.1


def start_thread(target: Callable[..., object], *args: Any) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` that never receives the
    asynchronous signals; RuntimeError if the system refuses a thread (RLIMIT_NPROC)."""
    thread = threading.Thread(target=target, args=args, daemon=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    try:
        thread.start()
    finally:  # a signal that came meanwhile is pending, and delivered here at once
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


def wait_in_main(event: threading.Event) -> None:
    """Block the main thread until ``event`` is set; a signal's handler (Ctrl-C's
    KeyboardInterrupt, SIGTERM's exit) still runs within ``SIGNAL_CHECK_S``.

    A lock wait is woken by a signal that lands during the wait, not by one that lands
    on the way in: the main thread, queued for the GIL behind the relay threads, took
    the signal, its C handler only marked it for the next bytecode, and a bare wait
    never ran one (``portd listen -u`` then ignored Ctrl-C, about once in 100 quick
    exchanges). A timed wait returns to Python between slices, so a marked signal's
    handler runs there.
    """
    while not event.wait(SIGNAL_CHECK_S):
        pass


def join_in_main(thread: threading.Thread) -> None:
    """``thread.join()`` for the main thread, in the slices of ``wait_in_main``."""
    while thread.is_alive():
        thread.join(SIGNAL_CHECK_S)
