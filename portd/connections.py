"""The server side of one TCP connection and of one UDP socket.

These asyncio protocols sit between the event loop and a handler: they count bytes,
own closing, contain handler crashes (logged once, that connection only) and write the
one ``connection_closed`` line. They stay thin because every received chunk passes
through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, cast

from portd.binds import format_peer
from portd.handlers.base import Peer, StreamSession

if TYPE_CHECKING:
    from portd.listeners import Listener

FAILURE_LOG_INTERVAL_S = 1.0
MAX_DATAGRAM_BYTES = 65536  # the largest UDP payload (65,507 over IPv4) fits
DATAGRAM_BATCH = 64  # datagrams read per wake-up before other sockets get a turn
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, zero timeout: close sends RST
_monotonic = time.monotonic


def _call_later(delay_s: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay_s, callback, *args)


def _describe_loss(exc: Exception) -> str:
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return str(exc) or type(exc).__name__


class StreamConnection(asyncio.Protocol):
    """One accepted TCP connection, offered to the handler as a Connection."""

    __slots__ = (
        "_idle_timer", "_send_timer", "bytes_in", "bytes_out", "conn_id", "ending", "failed",
        "last_active", "listener", "peername", "reason", "session", "started", "transport",
    )  # fmt: skip

    def __init__(self, listener: Listener, peername: Peer = ()) -> None:
        self.listener = listener
        self.peername = peername  # from accept(): the gate admitted (and will release) it
        self.last_active = 0.0
        self._send_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.failed = False
        self.ending: str | None = None  # set by whoever ends it; see ``how_it_ended``
        self.reason: str | None = None  # why portd ended it, for connection_closed's error
        self.session: StreamSession = StreamSession()
        self.conn_id = 0
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.started = self.last_active = time.monotonic()
        self.conn_id = self.listener.next_conn_id()
        if not self.peername:
            self.peername = transport.get_extra_info("peername") or ()
        self.listener.connection_opened(self)
        idle_timeout_s = self.listener.config.limits.idle_timeout_s
        if idle_timeout_s:
            self._idle_timer = _call_later(idle_timeout_s, self._check_idle, idle_timeout_s)
        try:
            self.session = self.listener.handler.open_session(self)
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
        send_timeout_s = self.listener.config.limits.send_timeout_s
        if send_timeout_s and self._send_timer is None:
            self._send_timer = _call_later(send_timeout_s, self._time_out, "send_timeout")
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
        for timer in (self._idle_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        try:
            self.session.connection_lost(exc)
        except Exception as error:  # noqa: BLE001
            self._handler_failed(error)
        if self.ending is None:
            self.ending = "closed" if exc is None else _describe_loss(exc)
        self.listener.connection_closed(self, exc)

    @property
    def peer(self) -> str:
        """``host:port`` of the peer (formatted only when someone asks: logs, handlers)."""
        return format_peer(self.peername)

    @property
    def peer_host(self) -> str:
        """The peer's address alone."""
        return str(self.peername[0]) if self.peername else ""

    @property
    def how_it_ended(self) -> str:
        """closed (cleanly), reset (by the peer), aborted (by portd), handler_failed, or
        another error's text; "open" while it lasts."""
        return self.ending or "open"

    def _check_idle(self, timeout_s: float) -> None:
        """One timer per connection, pushed back lazily: the data path only stores a time."""
        quiet_s = _monotonic() - self.last_active
        if quiet_s < timeout_s:
            self._idle_timer = _call_later(timeout_s - quiet_s, self._check_idle, timeout_s)
        else:
            self._time_out("idle_timeout")

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

    def _handler_failed(self, exc: Exception) -> None:
        if not self.failed:
            self.failed = True
            self.ending = "handler_failed"
            self.listener.log.error(
                "handler_failed", conn_id=self.conn_id, peer=self.peer, exc_info=exc
            )
        self.transport.abort()

    # The Connection interface offered to sessions.

    @property
    def log(self) -> Any:
        """The listener's logger bound to this connection."""
        return self.listener.log.bind(conn_id=self.conn_id, peer=self.peer)

    @property
    def draining(self) -> bool:
        """True once the daemon is stopping."""
        return self.listener.draining

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer."""
        self.bytes_out += len(data)
        self.last_active = _monotonic()
        self.transport.write(data)

    def get_write_buffer_size(self) -> int:
        """Bytes queued in the transport."""
        return self.transport.get_write_buffer_size()

    def write_eof(self) -> None:
        """Half-close after queued data."""
        if self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()

    def close(self) -> None:
        """Close after queued data."""
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

    def pause_reading(self) -> None:
        """Stop reading from the peer."""
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the peer again."""
        if not self.transport.is_closing():
            self.transport.resume_reading()


class DatagramServer:
    """One bound UDP socket, read and written here, offered to the handler as a
    DatagramEndpoint.

    portd reads the socket itself (``add_reader`` and ``recvfrom_into``) instead of handing
    it to ``loop.create_datagram_endpoint``: uvloop adopts a socket through libuv's
    ``uv_udp_open()``, which turns SO_REUSEADDR on, and with it any local user could bind
    the same address and receive the clients' datagrams. The socket keeps exactly the
    options portd.sockets gave it, on every loop.

    While the kernel's send buffer is full, replies are dropped and counted instead of
    queued: UDP promises no delivery, and a queue would grow without bound.
    """

    def __init__(self, listener: Listener, sock: socket.socket) -> None:
        self.listener = listener
        self.sock = sock
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0
        self.failures = 0
        self._last_failure_log = 0.0
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
        buffer, recvfrom_into = self._buffer, self.sock.recvfrom_into
        for _ in range(DATAGRAM_BATCH):  # then let other sockets have the loop
            try:
                size, addr = recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued for an earlier reply
                self.listener.log.debug("datagram_error", error=exc.strerror or str(exc))
                continue
            self.datagram_received(bytes(buffer[:size]), addr)  # one copy, sized
            if self._loop is None:  # the handler or an observer stopped the listener
                return

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Gate, record and hand one datagram to the handler."""
        self.datagrams_in += 1
        self.bytes_in += len(data)
        refusal = self.listener.datagram_gate.admit(addr[0], addr[1])
        if refusal is not None:
            self.listener.datagram_log.refused(refusal, format_peer(addr))
            return
        for observer in self.listener.observers:
            observer.datagram_received(data, addr)
        try:
            self.listener.handler.datagram_received(data, addr, self)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the socket
            self._handler_failed(exc, addr)

    def send(self, data: bytes, peer: Peer) -> bool:
        """Send one datagram (an empty one too); False (and counted) when it was dropped
        because the send buffer is full or the socket no longer serves."""
        if self._loop is None:
            self.dropped += 1
            return False
        try:
            self.sock.sendto(data, peer)
        except OSError:  # EAGAIN: the send buffer is full; others: the peer is unreachable
            self.dropped += 1
            return False
        self.datagrams_out += 1
        self.bytes_out += len(data)
        return True

    @property
    def log(self) -> Any:
        """The listener's logger."""
        return self.listener.log

    def _handler_failed(self, exc: Exception, addr: Any) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            self._last_failure_log = now
            self.listener.log.error(
                "handler_failed", peer=format_peer(addr), failures=self.failures, exc_info=exc
            )
