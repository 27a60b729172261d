"""The narrow host a connection sees: what it needs of its listener, and nothing more.

A StreamConnection reads its handler, limits, logger and clock here, asks for its id,
and reports its opening and closing; it never reaches the Listener (its sockets, its
gate, its other connections) or the event loop's other services.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portd.listeners.readiness import Readiness

if TYPE_CHECKING:
    from portd.handlers.base import Handler
    from portd.limits import Limits
    from portd.listeners.idle import IdleTimeouts
    from portd.listeners.stream import StreamConnection


class ConnectionHost:
    """Shared by every connection of one listener; the listener keeps it current."""

    __slots__ = (
        "clock", "closed", "draining", "events", "failed", "handler", "idle", "lends", "limits",
        "log", "name", "next_conn_id", "opened", "readiness", "tls",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        *,
        handler: Handler,
        limits: Limits,
        log: Any,
        next_conn_id: Callable[[], int],
        opened: Callable[[StreamConnection], None],
        closed: Callable[[StreamConnection, Exception | None], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        self.name = name
        self.handler = handler
        self.limits = limits
        self.log = log
        self.next_conn_id = next_conn_id
        self.opened = opened
        self.closed = closed
        self.failed = failed  # a session raised (logged already); observers hear of it
        self.draining = False  # set once the daemon stops; sessions read it
        # Named counts of what happens to connections beyond their bytes and endings (a
        # layer below the handler may add its own): portd status shows them and /metrics
        # exports them per listener.
        self.events: Counter[str] = Counter()
        self.clock: asyncio.AbstractEventLoop | None = None  # the loop, once serving
        self.idle: IdleTimeouts | None = None  # with idle_timeout_s, once serving
        self.readiness: Readiness | None = None  # descriptors watched for the connections
        # What the connections' transports may be, so a plaintext one asks for neither.
        self.tls = False  # a TLS layer (its session is read when the connection is made)
        self.lends = False  # a LendingTransport (a program may have had the socket)

    def watcher(self) -> Readiness:
        """The listener's one epoll set for what its connections watch (made when first
        needed; the listener closes it)."""
        if self.readiness is None:
            assert self.clock is not None  # serving
            self.readiness = Readiness(self.clock)
        return self.readiness
