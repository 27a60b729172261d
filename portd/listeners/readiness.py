"""An epoll set of a listener's own, which the event loop watches as one descriptor.

Descriptors a connection watches for its handler (a program's pipes and pidfd) and the
socket of a lending transport are watched here rather than with the loop's
``add_reader``/``add_writer``: uvloop's are libuv's ``uv_poll``, which on EPOLLERR stops
watching the descriptor for good and reports EBADF to the loop's exception handler
without calling the callback; a socket the peer reset and a pipe whose reader left
both raise EPOLLERR, and the connection would never hear of it. Through a set of its
own, the loop only ever sees the set's descriptor readable, and a callback gets every
event, errors included, the same on asyncio and uvloop.

Level-triggered, as ``add_reader``: a callback is called again while its descriptor
stays ready. Unwatch a descriptor before closing it (epoll forgets it only once every
descriptor of the same open file is closed, and a program may hold another).
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import Any

READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
EVENTS_PER_WAKEUP = 64

Callback = Callable[[], object]


class Readiness:
    """Watches descriptors for a listener's connections (see the module)."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._epoll: select.epoll | None = select.epoll()
        # fd -> [reader, writer, on_error]; on_error: errors only, called once with events
        self._entries: dict[int, list[Any]] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    def watch(self, fd: int, callback: Callback, writable: bool = False) -> None:
        """Call ``callback()`` while ``fd`` is readable (or writable), or has failed."""
        self._set(fd, 1 if writable else 0, callback)

    def unwatch(self, fd: int, writable: bool = False) -> None:
        """Stop calling the reader (or writer) of ``fd``."""
        self._set(fd, 1 if writable else 0, None)

    def watch_errors(self, fd: int, callback: Callable[[int], object]) -> None:
        """Call ``callback(events)`` once, when ``fd`` reports EPOLLERR or EPOLLHUP (no
        read or write interest: the bytes are someone else's)."""
        self._set(fd, 2, callback)

    def unwatch_errors(self, fd: int) -> None:
        """Forget the error watch of ``fd``."""
        self._set(fd, 2, None)

    def _set(self, fd: int, slot: int, callback: Any) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        entry = self._entries.get(fd)
        if entry is None:
            if callback is None:
                return
            entry = self._entries[fd] = [None, None, None]
            entry[slot] = callback
            try:
                epoll.register(fd, _mask(entry))
            except FileExistsError:  # a program holds another descriptor of it, watched
                epoll.modify(fd, _mask(entry))
            return
        entry[slot] = callback
        if entry == [None, None, None]:
            del self._entries[fd]
            with contextlib.suppress(OSError):  # closed already: the kernel forgot it
                epoll.unregister(fd)
        else:
            try:
                epoll.modify(fd, _mask(entry))
            except FileNotFoundError:  # closed without an unwatch, and opened again
                epoll.register(fd, _mask(entry))

    def _ready(self) -> None:
        if self._epoll is None:
            return
        for fd, events in self._epoll.poll(0, EVENTS_PER_WAKEUP):
            entry = self._entries.get(fd)
            if entry is None:
                continue
            if entry[0] is not None and events & READ_EVENTS:
                entry[0]()
            if entry[1] is not None and events & WRITE_EVENTS:
                entry[1]()
            on_error = entry[2]
            if on_error is not None and events & (select.EPOLLERR | select.EPOLLHUP):
                self._set(fd, 2, None)
                on_error(events)

    def close(self) -> None:
        """Stop watching everything (idempotent)."""
        epoll, self._epoll = self._epoll, None
        if epoll is not None:
            self._loop.remove_reader(epoll.fileno())
            epoll.close()
            self._entries.clear()


def _mask(entry: list[Any]) -> int:
    return (select.EPOLLIN if entry[0] is not None else 0) | (
        select.EPOLLOUT if entry[1] is not None else 0
    )
