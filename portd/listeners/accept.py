"""The accept loop of a stream listener: readiness, batches, back-off, and errnos.

portd accepts on its own sockets (``add_reader`` plus accept()) rather than through
``loop.create_server``: uvloop closes a server for good when accept() fails with
ENOBUFS or ENOMEM (and sheds every pending client on EMFILE), while portd must back off
and recover. Accepting here also keeps a socket usable after its listener stops
serving it (a listener that lives on across a reload keeps the very same socket).

What accept() may fail with, and what the loop does:

* ACCEPT_RETRY_ERRNOS: that one pending connection is gone (the peer reset it, or a
  network error accept(2) says to treat like EAGAIN): take the next one.
* ACCEPT_CAPACITY_ERRNOS: out of descriptors or kernel memory: stop watching the
  sockets for a while (50 ms, doubling to 1 s while the errors last), never spin.
  Waiting clients stay in the kernel's backlog and are served once resources return.
* anything else: the same back-off, logged with ``capacity: false``.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import socket
from collections.abc import Callable, Sequence
from typing import Any

ACCEPT_BATCH = 64  # accepts per wake-up before other sockets get a turn
ACCEPT_RETRY_ERRNOS = frozenset({
    errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
    errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.EPERM,
})  # fmt: skip
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_START_S = 0.05
ACCEPT_BACKOFF_MAX_S = 1.0

# (accepted socket, peer address from accept()) -> keep accepting?
OnAccept = Callable[[socket.socket, Any], bool]


class AcceptedSocket(socket.socket):
    """An accepted socket whose family and type read as ints: the event loop reads both
    of every connection, and socket.socket makes an enum of each on every read.

    A socket.socket all the same, as it must be: uvloop detaches a socket.socket once
    the transport has closed the descriptor, but closes anything else again, which
    could close a descriptor another thread had just been given the number of.
    """

    __slots__ = ()
    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]


class AcceptLoop:
    """Accepts on a listener's sockets and hands every connection to ``on_accept``."""

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        on_accept: OnAccept,
        log: Any,
        batch_done: Callable[[], None] | None = None,
    ) -> None:
        """``on_accept`` gets every accepted socket; ``batch_done``, if given, is called
        after each wake-up's accepts (see portd.listeners.adopt)."""
        self.sockets = list(sockets)
        self.on_accept = on_accept
        self.batch_done = batch_done
        self.log = log
        self.accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backoff_s = 0.0
        self._resume: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Accept on ``loop`` from now on."""
        self._loop = loop
        self._watch(True)

    def stop(self) -> None:
        """Stop accepting (idempotent); the sockets stay open for their owner."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self.accepting:
            self._watch(False)

    def _watch(self, on: bool) -> None:
        assert self._loop is not None
        self.accepting = on
        for sock in self.sockets:
            if on:  # the family and type as ints, read here once, not at every wake-up
                shape = int(sock.family), int(sock.type)  # enum conversions: 1.4 µs
                self._loop.add_reader(sock.fileno(), self._ready, sock, *shape)
            else:
                self._loop.remove_reader(sock.fileno())

    def _ready(self, sock: socket.socket, family: int, kind: int) -> None:
        try:
            self._accept_batch(sock, family, kind)
        finally:  # what the batch took before a failure is still finished
            if self.batch_done is not None:
                self.batch_done()

    def _accept_batch(self, sock: socket.socket, family: int, kind: int) -> None:
        on_accept, proto = self.on_accept, sock.proto
        # socket.accept() spends more on its wrapper (the family and type turned into
        # enums, a timeout check) than on accept4(): the socket is made here from ints.
        accept = sock._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in ACCEPT_RETRY_ERRNOS:
                    continue
                self._back_off(exc)
                return
            self._backoff_s = 0.0
            if not on_accept(AcceptedSocket(family, kind, proto, fd), addr) or not self.accepting:
                return

    def _back_off(self, exc: OSError) -> None:
        assert self._loop is not None
        self._backoff_s = min(
            max(self._backoff_s * 2, ACCEPT_BACKOFF_START_S), ACCEPT_BACKOFF_MAX_S
        )
        capacity = exc.errno in ACCEPT_CAPACITY_ERRNOS
        self.log.warning(
            "accept_failed", error=exc.strerror, capacity=capacity, retry_in_s=self._backoff_s
        )
        self._watch(False)
        self._resume = self._loop.call_later(self._backoff_s, self._watch, True)
