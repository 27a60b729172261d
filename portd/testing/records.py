"""What a test server saw: one record per closed connection and per datagram.

A :class:`Records` is the listener's observer. It is written on the server's event
loop (a background thread in sync mode) and read from the test's thread, so every
access takes a lock and readers get immutable snapshots. Waiting for records works
from any thread and from any asyncio loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from portd.endpoints.base import Peer
    from portd.listeners.stream import StreamConnection

MAX_RECORDS = 100_000  # per kind; a test that makes more is told (``records_dropped``)
MAX_FAILURES_KEPT = 10


class HandlerFailedError(AssertionError):
    """The handler a test server ran raised: the test that served it fails with it, as
    pytest-httpserver re-raises server-side errors (``raise_handler_errors=False`` to
    test a client against a crashing server on purpose). The first failure is the cause.
    """

    def __init__(self, server: str, failures: list[BaseException], count: int) -> None:
        first = failures[0]
        more = f" (and {count - 1} more)" if count > 1 else ""
        super().__init__(f"{server}: the handler raised {type(first).__name__}: {first}{more}")
        self.failures = tuple(failures)
        self.count = count


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """One TCP connection, once closed.

    Attributes:
        conn_id: the server's number for it (1, 2, ... in accept order).
        peer: the client's ``host:port``.
        bytes_in: bytes received from the client.
        bytes_out: bytes sent to the client.
        how_it_ended: ``closed`` (cleanly), ``reset`` (by the client), ``aborted`` (by
            the server: a fault, or still open when the server stopped),
            ``handler_failed``, or another error's text.
        duration_s: from accept to close.
        received: the bytes the client sent, for handlers that keep them (``recorder``,
            up to its ``max_bytes``); None for the others.
        upstream: a forward's upstream address; None for other handlers.
        upstream_ended: how a forward's upstream side ended: ``closed``, ``reset``,
            ``upstream_failed: Connection refused``, ...; None when it never ended or
            for other handlers.
        fields: what the handler added to the connection's ``connection_closed`` line
            (``exec``: ``exit_code``, ``exit_signal``, ``program_ms``).
    """

    conn_id: int
    peer: str
    bytes_in: int
    bytes_out: int
    how_it_ended: str
    duration_s: float
    received: bytes | None = None
    upstream: str | None = None
    upstream_ended: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DatagramRecord:
    """One UDP datagram as it arrived (before the handler answered)."""

    peer: str
    payload: bytes


class Records:
    """The listener observer that keeps records; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connections: list[ConnectionRecord] = []
        self._datagrams: list[DatagramRecord] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.dropped = 0
        self.handler_failures: list[BaseException] = []  # the first MAX_FAILURES_KEPT
        self.handler_failure_count = 0

    # The Observer side (runs on the server's loop).

    def connection_closed(self, conn: StreamConnection) -> None:
        """Record a closed connection."""
        from portd.handlers.recorder import RecorderSession

        session = conn.session
        received = session.received if isinstance(session, RecorderSession) else None
        fields = session.log_fields()
        record = ConnectionRecord(
            conn.conn_id,
            str(conn.peer),
            conn.bytes_in,
            conn.bytes_out,
            conn.how_it_ended,
            round(time.monotonic() - conn.started, 6),
            received,
            fields.get("upstream"),
            fields.get("upstream_ended"),
            dict(conn.fields or {}),
        )
        self._add(self._connections, record)

    def datagram_received(self, data: bytes, peer: Peer) -> None:
        """Record a datagram."""
        self._add(self._datagrams, DatagramRecord(str(peer), bytes(data)))

    def handler_failed(self, exc: BaseException) -> None:
        """Keep what the handler raised, for the test to fail with."""
        with self._lock:
            self.handler_failure_count += 1
            if len(self.handler_failures) < MAX_FAILURES_KEPT:
                self.handler_failures.append(exc)

    def _add(self, into: list[Any], record: Any) -> None:
        with self._lock:
            if len(into) >= MAX_RECORDS:
                self.dropped += 1
                return
            into.append(record)
            self._changed.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)

    # The reading side (any thread).

    @property
    def connections(self) -> tuple[ConnectionRecord, ...]:
        """Closed connections so far, in closing order."""
        with self._lock:
            return tuple(self._connections)

    @property
    def datagrams(self) -> tuple[DatagramRecord, ...]:
        """Datagrams so far, in arrival order."""
        with self._lock:
            return tuple(self._datagrams)

    def wait(self, kind: str, count: int, timeout_s: float) -> tuple[Any, ...]:
        """Block until ``count`` records of ``kind`` exist; return them all.

        Raises:
            TimeoutError: fewer arrived within ``timeout_s``.
        """
        items = self._list(kind)
        with self._lock:
            if not self._changed.wait_for(lambda: len(items) >= count, timeout_s):
                raise TimeoutError(_timeout_message(kind, len(items), count, timeout_s))
            return tuple(items)

    async def wait_async(self, kind: str, count: int, timeout_s: float) -> tuple[Any, ...]:
        """Like :meth:`wait`, without blocking the running loop: asyncio's, or any other
        anyio backend's (trio), which waits in a worker thread."""
        items = self._list(kind)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: trio, through anyio
            import anyio

            return await anyio.to_thread.run_sync(
                self.wait, kind, count, timeout_s, abandon_on_cancel=True
            )
        deadline = loop.time() + timeout_s
        while True:
            with self._lock:
                if len(items) >= count:
                    return tuple(items)
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
                have = len(items)
            try:
                await asyncio.wait_for(future, max(deadline - loop.time(), 0))
            except TimeoutError:
                raise TimeoutError(_timeout_message(kind, have, count, timeout_s)) from None

    def _list(self, kind: str) -> list[Any]:
        if kind == "connections":
            return self._connections
        if kind == "datagrams":
            return self._datagrams
        raise ValueError(f"unknown record kind {kind!r}; expected connections or datagrams")


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _timeout_message(kind: str, have: int, count: int, timeout_s: float) -> str:
    return f"{have} of {count} {kind} recorded within {timeout_s:g} s"
