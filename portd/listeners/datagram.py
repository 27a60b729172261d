"""One bound datagram socket (UDP or unix), read and written here, offered to the
handler as a DatagramEndpoint.

portd reads the socket itself (``add_reader`` and the endpoint kind's receive call)
instead of handing it to ``loop.create_datagram_endpoint``: uvloop adopts a socket
through libuv's ``uv_udp_open()``, which turns SO_REUSEADDR on, and with it any local
user could bind the same address and receive the clients' datagrams. The socket keeps
exactly the options its endpoint gave it, on every loop.

While the kernel's send buffer is full, replies are dropped and counted instead of
queued: datagrams promise no delivery, and a queue would grow without bound.

A handler that ``takes_sockets`` (exec, inetd's ``wait``) gets the socket itself: the
datagram that wakes the listener is peeked, not read, and checked by the gate (a
refused one is read and dropped); an admitted one makes portd stop reading and lend
the socket to the handler (:meth:`DatagramServer.lend_socket`), which reads on it
until it gives the socket back. Meanwhile the drain counts the lent socket as live,
tells its holder when the drain starts and again when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from portd.listeners.readiness import Readiness

if TYPE_CHECKING:
    from portd.endpoints.base import Endpoint, Peer
    from portd.handlers.base import Handler
    from portd.limits import DatagramGate, RefusalLog
    from portd.listeners import Observer

FAILURE_LOG_INTERVAL_S = 1.0
MAX_DATAGRAM_BYTES = 65536  # the largest UDP payload (65,507 over IPv4) fits
DATAGRAM_BATCH = 64  # datagrams read per wake-up before other sockets get a turn


class DatagramServer:
    """Reads datagrams, gates them, and passes them to the handler; sends its replies."""

    def __init__(
        self,
        sock: socket.socket,
        endpoint: Endpoint,
        *,
        handler: Handler,
        gate: DatagramGate,
        refusals: RefusalLog,
        observers: Sequence[Observer],
        log: Any,
        failed: Callable[[BaseException], None],
        released: Callable[[], None] = lambda: None,
        listener: str = "",
    ) -> None:
        self.sock = sock
        self.listener = listener  # the listener's name
        self.handler = handler
        self.gate = gate
        self.refusals = refusals
        self.observers = observers
        self.log = log
        self.failed = failed
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0
        self.failures = 0
        self._last_failure_log = 0.0
        self._receive, self._send = endpoint.datagram_io(sock)
        self._peek = endpoint.datagram_peek(sock) if handler.takes_sockets else None
        self._buffer = memoryview(bytearray(MAX_DATAGRAM_BYTES))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._clock: asyncio.AbstractEventLoop | None = None  # kept after stop()
        self._released = released  # the lent socket came back (the drain may be over)
        self.lent: tuple[Callable[[], object], Callable[[], object]] | None = None
        self.readiness: Readiness | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read datagrams from the socket on ``loop``."""
        self._loop = self._clock = loop
        self._read(True)

    def stop(self) -> None:
        """Stop reading (idempotent); the socket stays open for its owner. A holder of
        the lent socket is told to let it go."""
        if self._loop is not None:
            self._read(False)
            self._loop = None
            if self.lent is not None:
                self.lent[0]()

    def _read(self, on: bool) -> None:
        assert self._loop is not None
        if on and not self._reading:
            self._loop.add_reader(self.sock.fileno(), self._readable)
        elif not on and self._reading:
            self._loop.remove_reader(self.sock.fileno())
        self._reading = on

    @property
    def clock(self) -> asyncio.AbstractEventLoop:
        """The loop's clock and timers (for a holder of the lent socket)."""
        assert self._clock is not None  # started
        return self._clock

    @property
    def local_address(self) -> Any:
        """The socket's own address."""
        return self.sock.getsockname()

    def lend_socket(
        self, shutdown: Callable[[], object], abort: Callable[[], object]
    ) -> tuple[socket.socket, Callable[..., None]]:
        """A duplicate of the socket (blocking) for a program, and the release to call
        once the program is gone (``release(drop=True)``: it never started, and the
        datagram that woke it is dropped); portd reads nothing until then.
        ``shutdown()`` is called when the drain starts, ``abort()`` at its end."""
        duplicate = socket.socket(self.sock.family, self.sock.type, self.sock.proto,
                                  fileno=os.dup(self.sock.fileno()))  # fmt: skip
        duplicate.setblocking(True)
        self.lent = (shutdown, abort)

        def release(drop: bool = False) -> None:
            if self.lent is None:
                return
            self.lent = None
            if self.sock.fileno() >= 0:
                self.sock.setblocking(False)
                if drop:  # the program never started: the datagram that woke it goes
                    self._drop()
                if self._loop is not None:
                    self._read(True)
            self._released()

        return duplicate, release

    def abort_lent(self) -> bool:
        """The drain is over: the holder of the lent socket must end now (True if any)."""
        if self.lent is None:
            return False
        self.lent[1]()
        return True

    def watch(self, fd: int, callback: Callable[[], object], writable: bool = False) -> Any:
        """Watch ``fd`` (a program's pidfd) until the returned handle is cancelled."""
        if self.readiness is None:
            self.readiness = Readiness(self.clock)
        readiness = self.readiness
        readiness.watch(fd, callback, writable)
        return _Watch(readiness, fd, writable)

    def close(self) -> None:
        """Stop watching what holders asked for (the listener is gone)."""
        if self.readiness is not None:
            self.readiness.close()

    @property
    def serving(self) -> bool:
        """True while datagrams are read."""
        return self._loop is not None

    def _readable(self) -> None:
        if self._peek is not None:
            self._wake()
            return
        buffer, receive = self._buffer, self._receive
        for _ in range(DATAGRAM_BATCH):  # then let other sockets have the loop
            try:
                size, peer = receive(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued for an earlier reply
                self.log.debug("datagram_error", error=exc.strerror or str(exc))
                continue
            self.datagram_received(bytes(buffer[:size]), peer)  # one copy, sized
            if self._loop is None:  # the handler or an observer stopped the listener
                return

    def datagram_received(self, data: bytes, peer: Peer) -> None:
        """Gate, record and hand one datagram to the handler."""
        self.datagrams_in += 1
        self.bytes_in += len(data)
        refusal = self.gate.admit(peer)
        if refusal is not None:
            self.refusals.refused(refusal, str(peer))
            return
        for observer in self.observers:
            observer.datagram_received(data, peer)
        try:
            self.handler.datagram_received(data, peer, self)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the socket
            self._handler_failed(exc, peer)

    def _wake(self) -> None:
        """A datagram for a handler that takes the socket: lend it, or drop a refused one."""
        assert self._peek is not None
        for _ in range(DATAGRAM_BATCH):
            try:
                size, peer = self._peek(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.debug("datagram_error", error=exc.strerror or str(exc))
                continue
            self.datagrams_in += 1
            self.bytes_in += size
            refusal = self.gate.admit(peer)
            if refusal is not None:
                self.refusals.refused(refusal, str(peer))
                self._drop()
                continue
            for observer in self.observers:
                observer.datagram_received(bytes(self._buffer[:size]), peer)
            self._read(False)
            try:
                self.handler.datagram_socket_ready(peer, self)
            except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the socket
                self._handler_failed(exc, peer)
            if self.lent is None:  # not taken (the program did not start): drop it
                self._drop()
                if self._loop is not None:
                    self._read(True)
            return

    def _drop(self) -> None:
        """Read the datagram that was peeked, and forget it."""
        with contextlib.suppress(OSError):
            self._receive(self._buffer)

    def send(self, data: bytes, peer: Peer) -> bool:
        """Send one datagram (an empty one too); False (and counted) when it was dropped
        because the send buffer is full, the peer cannot be reached, or the socket no
        longer serves."""
        if self._loop is None:
            self.dropped += 1
            return False
        try:
            self._send(data, peer)
        except OSError:  # EAGAIN: the send buffer is full; others: the peer is unreachable
            self.dropped += 1
            return False
        self.datagrams_out += 1
        self.bytes_out += len(data)
        return True

    @property
    def max_sessions(self) -> int:
        """The listener's max_connections."""
        return self.gate.limits.max_connections

    def watch_socket(self, sock: socket.socket, readable: Callable[[], object]) -> None:
        """Read a handler's own socket on this loop (a forward's upstream sockets)."""
        if self._loop is not None:
            self._loop.add_reader(sock.fileno(), readable)

    def unwatch_socket(self, sock: socket.socket) -> None:
        """Stop reading a handler's own socket."""
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())

    def _handler_failed(self, exc: Exception, peer: Peer) -> None:
        self.failures += 1
        self.failed(exc)
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            self._last_failure_log = now
            self.log.error("handler_failed", peer=str(peer), failures=self.failures, exc_info=exc)


class _Watch:
    """A descriptor a datagram socket's holder watches."""

    def __init__(self, readiness: Readiness, fd: int, writable: bool) -> None:
        self.readiness, self.fd, self.writable = readiness, fd, writable
        self.active = True

    def cancel(self) -> None:
        """Stop watching (idempotent)."""
        if self.active:
            self.active = False
            self.readiness.unwatch(self.fd, self.writable)
