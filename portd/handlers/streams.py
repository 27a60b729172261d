"""The coroutine adapter: a handler written as ``async def serve(self, stream)``.

For handlers that are naturally sequential (run a program, relay to an upstream,
speak a line protocol), :class:`StreamHandler` runs ``serve`` as a task the connection
owns and hands it a :class:`Stream`, named like anyio's ByteStream: ``receive``,
``send``, ``send_eof``, ``aclose``. Flow control holds both ways: ``receive`` buffers at
most ``RECEIVE_HIGH_WATER`` bytes before reading stops, and ``send`` waits while the
peer does not read. When ``serve`` returns the connection is closed after what was sent;
when it raises, the failure is logged once as ``handler_failed`` and the connection is
aborted; when the peer vanishes, the task is cancelled (clean up in ``finally``).

    class Upper(StreamHandler):
        name = "upper"
        protocols = frozenset({"tcp"})

        async def serve(self, stream: Stream) -> None:
            while data := await stream.receive():
                await stream.send(data.upper())
"""

from __future__ import annotations

import asyncio
from typing import Any

from portd.endpoints.base import Peer
from portd.handlers.base import Connection, Handler, StreamSession

RECEIVE_HIGH_WATER = 256 * 1024  # buffered from the peer and not yet received: stop reading
RECEIVE_LOW_WATER = 64 * 1024


class StreamClosedError(ConnectionError):
    """The connection is gone (``send`` after the peer reset it, or after ``aclose``)."""


class Stream:
    """One connection as an async byte stream, with the connection's kit."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._buffer = bytearray()
        self._eof = False
        self._lost: Exception | None = None
        self._closed = False
        self._readable: asyncio.Event | None = None
        self._writable: asyncio.Event | None = None
        self._paused_reading = False
        self._draining: asyncio.Event | None = None

    @property
    def peer(self) -> Peer:
        """The client."""
        return self.conn.peer

    @property
    def listener(self) -> str:
        """The listener's name."""
        return self.conn.listener

    @property
    def conn_id(self) -> int:
        """The connection's id."""
        return self.conn.conn_id

    @property
    def log(self) -> Any:
        """The connection's logger."""
        return self.conn.log

    @property
    def draining(self) -> bool:
        """True once the daemon is stopping."""
        return self.conn.draining

    @property
    def send_paused(self) -> bool:
        """True while the peer is not reading: the next ``send`` waits."""
        return self._writable is not None

    @property
    def at_eof(self) -> bool:
        """True once the peer half-closed and every byte it sent was received."""
        return self._eof and not self._buffer

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` from the peer, waiting for some; ``b""`` once it half-closed.

        Raises:
            StreamClosedError: the connection was lost (reset, or closed by portd).
        """
        while not self._buffer:
            if self._eof:
                return b""
            if self._lost is not None or self._closed:
                raise StreamClosedError(f"connection lost: {self._lost or 'closed'}")
            self._readable = asyncio.Event()
            await self._readable.wait()
        data = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        if self._paused_reading and len(self._buffer) <= RECEIVE_LOW_WATER:
            self._paused_reading = False
            self.conn.resume_reading()
        return data

    async def send(self, data: bytes) -> None:
        """Queue ``data`` for the peer; wait while the peer is not reading.

        Raises:
            StreamClosedError: the connection is gone.
        """
        self._check_open()
        self.conn.write(data)
        while self._writable is not None:
            await self._writable.wait()
            self._check_open()

    async def send_eof(self) -> None:
        """Half-close: the peer reads EOF after what was sent."""
        self._check_open()
        self.conn.write_eof()

    def reset(self) -> None:
        """Close now with an RST: the exchange failed."""
        self._closed = True
        self.conn.reset()

    async def aclose(self) -> None:
        """Close after what was sent (idempotent)."""
        if not self._closed:
            self._closed = True
            self.conn.close()

    async def wait_draining(self) -> None:
        """Return once the daemon starts draining."""
        if self.conn.draining:
            return
        self._draining = self._draining or asyncio.Event()
        await self._draining.wait()

    def _check_open(self) -> None:
        # is_closing() turns true at once when a write fails; connection_lost comes a loop
        # turn later, and a coroutine that never waits would otherwise write on for ever.
        if self._lost is not None or self._closed or self.conn.is_closing():
            raise StreamClosedError(f"connection lost: {self._lost or 'closed'}")

    # Fed by the adapter session.

    def _data(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > RECEIVE_HIGH_WATER and not self._paused_reading:
            self._paused_reading = True
            self.conn.pause_reading()
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._readable is not None:
            self._readable.set()
            self._readable = None

    def _pause_writing(self) -> None:
        self._writable = self._writable or asyncio.Event()

    def _resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    def _eof_received(self) -> None:
        self._eof = True
        self._wake_reader()

    def _shutdown(self) -> None:
        if self._draining is not None:
            self._draining.set()

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("closed")
        self._wake_reader()
        self._resume_writing()


class _StreamSession(StreamSession):
    """The callbacks the server drives, fed to a Stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def data_received(self, data: bytes) -> None:
        self.stream._data(data)

    def eof_received(self) -> bool:
        self.stream._eof_received()
        return True  # the coroutine decides when to close

    def pause_writing(self) -> None:
        self.stream._pause_writing()

    def resume_writing(self) -> None:
        self.stream._resume_writing()

    def shutdown_requested(self) -> None:
        self.stream._shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream._connection_lost(exc)


class StreamHandler(Handler):
    """Base class of handlers written as ``async def serve(self, stream)``."""

    async def serve(self, stream: Stream) -> None:
        """Serve one connection; return to close it after what was sent."""
        raise NotImplementedError(f"handler {self.name!r} does not implement serve()")

    def open_session(self, conn: Connection) -> StreamSession:
        stream = Stream(conn)
        conn.start_task(self._run(stream))
        return _StreamSession(stream)

    async def _run(self, stream: Stream) -> None:
        try:
            await self.serve(stream)
        except StreamClosedError:
            return  # the peer went away mid-exchange: nothing left to close
        await stream.aclose()
