"""The server side of one stream connection, offered to its session as a Connection.

This asyncio protocol sits between the event loop and a handler's session: it counts
bytes, owns closing, runs the idle and send timeouts, contains handler crashes (logged
once, that connection only) and has its host write the one ``connection_closed`` line.
It stays thin because every received chunk passes through it.

For a handler that runs a program per connection it also lends the socket (see
portd.listeners.lending), keeps the connection counted while a *hold* is taken (a
program that outlives its client still holds a ``max_connections`` slot, is waited for
by the drain, and has its exit status in the ``connection_closed`` line), carries the
fields a handler adds to that line, and watches the descriptors a handler asks it to
(a program's pipes, its pidfd) until the connection is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from portd.endpoints.counters import kernel_byte_counts
from portd.handlers.base import StreamSession
from portd.listeners.readiness import Readiness

if TYPE_CHECKING:
    from portd.endpoints.base import Endpoint, Peer
    from portd.listeners.host import ConnectionHost
    from portd.tls.info import TLSInfo

RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, zero timeout: close sends RST
_monotonic = time.monotonic


DETACHED_SESSION = StreamSession()  # what a closed connection's callbacks reach


def _describe_loss(exc: Exception) -> str:
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return str(exc) or type(exc).__name__


class StreamConnection(asyncio.Protocol):
    """One accepted stream connection (TCP or unix), offered to the handler as a Connection."""

    __slots__ = (
        "_holds", "_lost", "_send_timer", "_tasks", "_tls", "_watches", "bytes_in", "bytes_out",
        "conn_id", "ending", "failed", "fields", "host", "idle_bucket", "last_active", "peer",
        "reason", "session", "started", "transport",
    )  # fmt: skip
    transport: asyncio.Transport  # from connection_made on

    def __init__(self, host: ConnectionHost, peer: Peer) -> None:
        self.host = host
        self.peer = peer  # from accept(): the gate admitted (and will release) it
        self.last_active = 0.0
        self._send_timer: asyncio.TimerHandle | None = None
        self.idle_bucket: set[StreamConnection] | None = None  # where IdleTimeouts keeps it
        self._tasks: set[asyncio.Task[Any]] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.failed = False
        self.ending: str | None = None  # set by whoever ends it; see ``how_it_ended``
        self.reason: str | None = None  # why portd ended it, for connection_closed's error
        self.session: StreamSession = DETACHED_SESSION  # until connection_made opens one
        self.conn_id = 0
        self.started = 0.0
        self.fields: dict[str, Any] | None = None  # a handler's additions to connection_closed
        self._holds = 0
        self._lost: tuple[Exception | None] | None = None  # (how the transport ended,)
        self._watches: set[FdWatch] | None = None
        self._tls: TLSInfo | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it (and no
        # typing.cast: a function call per connection).
        self.transport = transport  # type: ignore[assignment]
        self.started = self.last_active = _monotonic()
        host = self.host
        if host.tls and transport.get_extra_info("ssl_object") is not None:
            # Read now: asyncio's TLS transport forgets its session once closed twice,
            # and a program's connection is often asked after that (connection_closed).
            from portd.tls.info import tls_info

            self._tls = tls_info(transport)
        self.conn_id = host.next_conn_id()
        host.opened(self)
        if host.idle is not None:
            host.idle.watch(self, self.last_active)
        try:
            self.session = host.handler.open_session(self)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not reach the loop
            self._handler_failed(exc)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.last_active = _monotonic()
        try:
            self.session.data_received(data)
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc)

    def eof_received(self) -> bool:
        try:
            return bool(self.session.eof_received())
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc)
            return False

    def pause_writing(self) -> None:
        send_timeout_s = self.host.limits.send_timeout_s
        if send_timeout_s and self._send_timer is None:
            self._send_timer = self.clock.call_later(send_timeout_s, self._time_out, "send_timeout")
        try:
            self.session.pause_writing()
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        try:
            self.session.resume_writing()
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle_bucket is not None:
            self.idle_bucket.discard(self)
            self.idle_bucket = None
        if self._send_timer is not None:
            self._send_timer.cancel()
        if self.host.lends and getattr(self.transport, "lent", False):  # portd did not
            # carry the bytes: ask the kernel
            counts = kernel_byte_counts(self.transport.get_extra_info("socket"))
            if counts is not None:
                self.bytes_in, self.bytes_out = counts
        try:
            self.session.connection_lost(exc)
        except Exception as error:  # noqa: BLE001
            self._handler_failed(error)
        if self._tasks:
            for task in list(self._tasks):
                task.cancel()
        if self.ending is None:
            self.ending = "closed" if exc is None else _describe_loss(exc)
        self._lost = (exc,)
        if self._holds:  # closed for good once the last hold is released
            return
        self._closed_for_good(exc)

    def _closed_for_good(self, exc: Exception | None) -> None:
        if self._watches:
            for watch in list(self._watches):
                watch.cancel()
        self.host.closed(self, exc)
        # The session holds this connection: without the cycle, refcounting frees both
        # now, and the collector has no per-connection garbage to find (its full passes,
        # each a pause of every connection, come far less often).
        self.session = DETACHED_SESSION

    @property
    def how_it_ended(self) -> str:
        """closed (cleanly), reset (by the peer), aborted (by portd), handler_failed,
        idle_timeout, send_timeout, or another error's text; "open" while it lasts."""
        return self.ending or "open"

    @property
    def error(self) -> str | None:
        """Why it ended, for the log: None for a clean close."""
        if self.reason is not None:
            return self.reason
        return None if self.how_it_ended == "closed" else self.how_it_ended

    def _time_out(self, reason: str) -> None:
        self.cut(reason)

    def cut(self, ending: str, reason: str | None = None) -> None:
        """End it now with an RST: portd gave up on the exchange (a timeout, the end of
        the drain), and the peer must be able to tell that from a finished one."""
        if self.ending is None:
            self.ending = ending
        if self.reason is None:
            self.reason = reason
        self._send_reset()
        self.transport.abort()

    def _send_reset(self) -> None:
        """SO_LINGER 0, so the close that follows sends an RST (once the transport has
        closed there is no socket left: uvloop's then has fd -1 and raises ValueError)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)

    def shutdown_requested(self) -> None:
        """Tell the session the daemon is draining."""
        try:
            self.session.shutdown_requested()
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc)

    def _handler_failed(self, exc: BaseException) -> None:
        if not self.failed:
            self.failed = True
            self.ending = "handler_failed"
            self.host.log.error(
                "handler_failed", conn_id=self.conn_id, peer=str(self.peer), exc_info=exc
            )
            self.host.failed(exc)
        self.transport.abort()

    # The Connection interface offered to sessions.

    @property
    def listener(self) -> str:
        """The listener's name."""
        return self.host.name

    @property
    def log(self) -> Any:
        """The listener's logger bound to this connection."""
        return self.host.log.bind(conn_id=self.conn_id, peer=str(self.peer))

    @property
    def clock(self) -> asyncio.AbstractEventLoop:
        """The loop this connection runs on (its time and timers)."""
        clock = self.host.clock
        assert clock is not None  # set before the listener accepts
        return clock

    @property
    def draining(self) -> bool:
        """True once the daemon is stopping."""
        return self.host.draining

    def start_task(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[Any]:
        """A task this connection owns (see the Connection protocol)."""
        task = self.clock.create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._handler_failed(error)

    @property
    def local_address(self) -> Any:
        """The address the peer connected to (getsockname())."""
        return self.transport.get_extra_info("sockname")

    def lend_socket(self) -> socket.socket | None:
        """A duplicate of the socket for a program's stdin and stdout, or None when the
        bytes must pass through portd (see the Connection protocol)."""
        lend = getattr(self.transport, "lend", None)
        return lend() if lend is not None else None

    def reclaim_socket(self) -> bool:
        """The program that had the socket is gone: portd may read it again. True when
        the peer half-closed and left nothing unread (see the Connection protocol)."""
        reclaim = getattr(self.transport, "reclaim", None)
        return bool(reclaim()) if reclaim is not None else False

    def hold(self) -> Callable[[], None]:
        """Keep the connection counted until the returned release is called, even once
        its transport is gone (see the Connection protocol)."""
        if self._lost is not None and not self._holds:
            return _nothing  # already closed for good
        self._holds += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._holds -= 1
            if not self._holds and self._lost is not None:
                self._closed_for_good(self._lost[0])

        return release

    def annotate(self, **fields: Any) -> None:
        """Add ``fields`` to this connection's ``connection_closed`` line."""
        if self.fields is None:
            self.fields = {}
        self.fields.update(fields)

    def watch(self, fd: int, callback: Callable[[], object], writable: bool = False) -> FdWatch:
        """Call ``callback()`` whenever ``fd`` is readable (writable), until the watch is
        cancelled or the connection is over; the caller owns ``fd`` (cancel, then close)."""
        watch = FdWatch(self.host.watcher(), fd, callback, writable, self)
        if self._watches is None:
            self._watches = set()
        self._watches.add(watch)
        return watch

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer."""
        self.bytes_out += len(data)
        self.last_active = _monotonic()
        self.transport.write(data)

    def get_write_buffer_size(self) -> int:
        """Bytes queued in the transport."""
        return self.transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        """True once the transport is closing or closed."""
        return self.transport.is_closing()

    def write_eof(self) -> None:
        """Half-close after queued data."""
        if self.transport.can_write_eof() and not self.transport.is_closing():
            # asyncio's shutdown() raises ENOTCONN once the peer's RST has arrived: the
            # peer is gone, which the transport reports itself; not the handler's failure.
            with contextlib.suppress(OSError):
                self.transport.write_eof()

    def close(self) -> None:
        """Close after queued data (idempotent: asyncio's TLS transport forgets its
        protocol on a second close(), and then fails every get_extra_info())."""
        if not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping queued data."""
        if self.ending is None:
            self.ending = "aborted"
        self.transport.abort()

    def reset(self, reason: str = "") -> None:
        """Close now with an RST, even when every byte was read, so the peer can tell a
        failed exchange (an upload that was not stored) from a finished one; ``reason``
        goes to the ``connection_closed`` line. Harmless once closed."""
        self.cut("aborted", reason or None)

    @property
    def sockname(self) -> Any:
        """The local address of the accepted socket."""
        return self.transport.get_extra_info("sockname")

    def connect(
        self,
        endpoint: Endpoint,
        protocol_factory: Any,
        *,
        ssl: Any = None,
        server_hostname: str | None = None,
    ) -> Any:
        """A client connection to ``endpoint`` on this connection's loop."""
        return endpoint.open_stream(
            self.clock, protocol_factory, ssl=ssl, server_hostname=server_hostname
        )

    def pause_reading(self) -> None:
        """Stop reading from the peer."""
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the peer again."""
        if not self.transport.is_closing():
            self.transport.resume_reading()

    @property
    def tls(self) -> TLSInfo | None:
        """The TLS session of a TLS connection, None for plaintext."""
        return self._tls


def _nothing() -> None:
    """The release of a hold taken too late to matter."""


class FdWatch:
    """One descriptor a connection watches for a handler (see portd.listeners.readiness)."""

    __slots__ = ("conn", "fd", "readiness", "writable")

    def __init__(
        self,
        readiness: Readiness,
        fd: int,
        callback: Callable[[], object],
        writable: bool,
        conn: StreamConnection,
    ) -> None:
        self.readiness, self.fd, self.writable, self.conn = readiness, fd, writable, conn
        readiness.watch(fd, callback, writable)

    def cancel(self) -> None:
        """Stop watching (idempotent)."""
        watches = self.conn._watches
        if watches is None or self not in watches:
            return
        watches.discard(self)
        self.readiness.unwatch(self.fd, self.writable)
