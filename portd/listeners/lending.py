"""The transport of a connection whose socket may be lent to a program: portd's own,
minimal stream transport over an accepted socket, which starts *not reading*.

A handler that runs a program per connection (``exec``) gives the program the socket
itself as stdin and stdout, so the bytes never pass through Python. That needs a
transport that has read nothing when the handler decides: uvloop starts reading right
after ``connection_made`` whatever the protocol asked (its ``_call_connection_made``),
and a byte portd read is a byte the program never sees. So these connections get this
transport on both loops, and the same rules as any other: the server closes them, a
cut sends an RST, the one ``connection_closed`` line is written by the listener.

While lent, the socket is blocking (a program expects a blocking stdin; the flag
belongs to the socket, shared by every descriptor of it) and portd does not read it,
but it still watches it for errors (no event asked: the kernel reports EPOLLERR and
EPOLLHUP anyway): the peer's reset, or a keepalive that failed, ends the connection as
a transport's read error would, so the handler can hang the program up. ``reclaim``
makes the socket portd's again (non-blocking, read by this transport) once the program
is gone. The socket is watched through the listener's epoll set (see
portd.listeners.readiness: uvloop's add_reader goes deaf on a reset socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
from typing import TYPE_CHECKING, Any

from portd.listeners.readiness import Readiness

if TYPE_CHECKING:
    from portd.config import ListenerConfig

READ_BYTES = 256 * 1024  # per recv(), as asyncio's selector transport reads
WRITE_HIGH_WATER = 64 * 1024  # queued in portd: pause the protocol (asyncio's default)
WRITE_LOW_WATER = 16 * 1024


def bytes_seen_by_portd(config: ListenerConfig) -> str | None:
    """The listener feature that needs every byte to pass through portd, so no program
    may hold the socket itself, or None. A TLS layer belongs here too (its bytes are
    not the program's), as does any limit that watches the bytes."""
    if config.tls is not None:
        return "tls"
    if config.limits.idle_timeout_s:
        return "idle_timeout_s"
    return None


class LendingTransport(asyncio.Transport):
    """A stream transport that starts paused and can lend its socket (see the module)."""

    def __init__(self, loop: Any, sock: socket.socket, protocol: Any, readiness: Readiness) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._reading = False
        self._closing = False
        self._lost = False
        self._eof_asked = False
        self._buffer = bytearray()
        self._protocol_paused = False
        self._watching_errors = False
        self._writing = False
        self.readiness = readiness  # the listener's epoll set
        self._held = False  # lent and not reclaimed: a program reads the socket, not portd
        # The listener leaves an accepted socket blocking, as a program needs it; portd
        # makes it non-blocking before its own first read or write.
        self._blocking = True
        self.lent = False
        self.has_read = False

    # What a lending connection asks of it.

    def lend(self) -> socket.socket | None:
        """A duplicate of the socket for a program (the caller closes it once the
        program has it), or None once this transport has read or is closing."""
        if self.has_read or self._closing:
            return None
        duplicate = socket.socket(self._sock.family, self._sock.type, self._sock.proto,
                                  fileno=os.dup(self._fd))  # fmt: skip
        if not self._blocking:
            duplicate.setblocking(True)
            self._blocking = True
        self.lent = self._held = True
        self._watch_errors()
        return duplicate

    def reclaim(self) -> bool:
        """The program is gone: the socket is portd's again (non-blocking, not watched
        for errors only); reading resumes when the protocol asks.

        Returns:
            True when the peer has half-closed and nothing it sent is unread, so a close
            now ends the connection with a FIN (unread bytes would make it an RST).
        """
        self._unwatch_errors()
        self._held = False
        if self._closing:
            return False
        self._nonblocking()
        try:
            return self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # EAGAIN: the peer still sends, or may; a reset: reading says so
            return False

    def _nonblocking(self) -> None:
        if self._blocking:
            self._blocking = False
            self._sock.setblocking(False)

    def _watch_errors(self) -> None:
        self._watching_errors = True
        self.readiness.watch_errors(self._fd, self._error_event)

    def _unwatch_errors(self) -> None:
        if self._watching_errors:
            self._watching_errors = False
            self.readiness.unwatch_errors(self._fd)

    def _error_event(self, events: int) -> None:
        self._watching_errors = False  # a watch fires once
        if events & select.EPOLLERR:
            code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNRESET
            self._force_close(ConnectionResetError(code, os.strerror(code)))
        # EPOLLHUP alone: closed both ways without an error (the program shut its side
        # down and the peer closed): nothing is left to watch.

    # The asyncio transport interface StreamConnection uses.

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``socket``, ``sockname`` and ``peername``, as asyncio's transports answer."""
        try:
            if name == "socket":
                return self._sock if self._sock.fileno() >= 0 else None
            if name == "sockname":
                return self._sock.getsockname()
            if name == "peername":
                return self._sock.getpeername()
        except OSError:
            return default
        return default

    def is_reading(self) -> bool:
        """True while the socket is read."""
        return self._reading

    def pause_reading(self) -> None:
        """Stop reading."""
        if self._reading:
            self._reading = False
            self.readiness.unwatch(self._fd)

    def resume_reading(self) -> None:
        """Read again (never while the socket is lent)."""
        if not self._reading and not self._closing and not self._held:
            self._nonblocking()
            self._reading = True
            self.readiness.watch(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data = self._sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        self.has_read = True
        if data:
            self._protocol.data_received(data)
            return
        self.pause_reading()
        if not self._protocol.eof_received():
            self.close()
        elif not self._closing:  # half-closed, and a reset may follow: still heard
            self._watch_errors()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``, queueing what the kernel does not take (paused past the mark)."""
        if self._closing or self._eof_asked or not data:
            return
        self._nonblocking()
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._force_close(exc)
                return
            data = data[sent:]
            if not data:
                return
            self._writing = True
            self.readiness.watch(self._fd, self._write_ready, writable=True)
        self._buffer += data
        if len(self._buffer) > WRITE_HIGH_WATER and not self._protocol_paused:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            sent = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        del self._buffer[:sent]
        if self._protocol_paused and len(self._buffer) <= WRITE_LOW_WATER:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if self._buffer:
            return
        self._stop_writing()
        if self._closing:
            self._schedule_lost(None)
        elif self._eof_asked:
            self._shutdown_write()

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self.readiness.unwatch(self._fd, writable=True)

    def get_write_buffer_size(self) -> int:
        """Bytes queued in portd."""
        return len(self._buffer)

    def can_write_eof(self) -> bool:
        """Always: a stream socket half-closes."""
        return True

    def write_eof(self) -> None:
        """Half-close once the queue is sent."""
        if self._closing or self._eof_asked:
            return
        self._eof_asked = True
        if not self._buffer:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def is_closing(self) -> bool:
        """True once closing or lost."""
        return self._closing

    def close(self) -> None:
        """Close once the queue is sent."""
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if not self._buffer:
            self._schedule_lost(None)

    def abort(self) -> None:
        """Close now, dropping the queue."""
        self._force_close(None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._buffer.clear()
        self._stop_writing()
        self._closing = True
        self.pause_reading()
        self._schedule_lost(exc)

    def _schedule_lost(self, exc: Exception | None) -> None:
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._call_lost, exc)

    def _call_lost(self, exc: Exception | None) -> None:
        self._unwatch_errors()
        self.pause_reading()
        self._stop_writing()
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
