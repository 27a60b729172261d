"""The process around the supervisor: what ``portd serve`` must do before it serves.

SIGHUP's default action ends the process, and the event loop's signal receiver exists
only once every listener is bound: a reload asked for in between (``systemctl reload``
right after a start, a log rotation script) would kill the daemon. From the moment
``portd serve`` starts, such a SIGHUP is held and applied once the daemon serves.
"""

from __future__ import annotations

import signal
from types import FrameType

_held_reloads = 0


def hold_early_reloads() -> None:
    """Count SIGHUPs instead of dying of them until the supervisor's receiver takes over."""
    signal.signal(signal.SIGHUP, _hold)


def _hold(signum: int, frame: FrameType | None) -> None:
    global _held_reloads  # noqa: PLW0603 - a signal handler's only way to report
    _held_reloads += 1


def take_held_reloads() -> int:
    """How many SIGHUPs arrived before the supervisor listened for them (and forget them)."""
    global _held_reloads
    held, _held_reloads = _held_reloads, 0
    return held
