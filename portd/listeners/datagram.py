"""One bound datagram socket (UDP or unix), read and written here, offered to the
handler as a DatagramEndpoint.

portd reads the socket itself (``add_reader`` and the endpoint kind's receive call)
instead of handing it to ``loop.create_datagram_endpoint``: uvloop adopts a socket
through libuv's ``uv_udp_open()``, which turns SO_REUSEADDR on, and with it any local
user could bind the same address and receive the clients' datagrams. The socket keeps
exactly the options its endpoint gave it, on every loop.

While the kernel's send buffer is full, replies are dropped and counted instead of
queued: datagrams promise no delivery, and a queue would grow without bound.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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
    ) -> None:
        self.sock = sock
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
        self._buffer = memoryview(bytearray(MAX_DATAGRAM_BYTES))
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read datagrams from the socket on ``loop``."""
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def stop(self) -> None:
        """Stop reading (idempotent); the socket stays open for its owner."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    @property
    def serving(self) -> bool:
        """True while datagrams are read."""
        return self._loop is not None

    def _readable(self) -> None:
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
    def clock(self) -> Any:
        """The loop serving this socket."""
        return self._loop

    @property
    def max_sessions(self) -> int:
        """The listener's max_connections."""
        return self.gate.limits.max_connections

    def watch(self, sock: socket.socket, readable: Callable[[], object]) -> None:
        """Read a handler's own socket on this loop."""
        if self._loop is not None:
            self._loop.add_reader(sock.fileno(), readable)

    def unwatch(self, sock: socket.socket) -> None:
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
