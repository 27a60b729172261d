"""The relay's pipes to a program: portd's end of its stdin and of its stdout, both
non-blocking and watched through the connection (the same on asyncio and uvloop).

Flow control holds both ways and nothing grows without bound: :class:`PipeWriter`
queues at most what one read from the client brings past HIGH_WATER before the session
stops reading the client, and :class:`PipeReader` stops reading the program while the
client does not read (the program then blocks in write(), as on a terminal).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from portd.handlers.base import Connection, FdWatch

HIGH_WATER = 256 * 1024  # queued for the program's stdin: stop reading the client
LOW_WATER = 64 * 1024
READ_BYTES = 256 * 1024


class PipeWriter:
    """portd's end of the program's stdin."""

    def __init__(self, conn: Connection, fd: int, drained: Callable[[], object]) -> None:
        self.conn = conn
        self.fd = fd
        self.drained = drained  # called once the queue fell below LOW_WATER
        self.queue = bytearray()
        self.closing = False
        self.broken = False  # the program closed its stdin (EPIPE): drop what comes
        self.watch: FdWatch | None = None
        os.set_blocking(fd, False)

    @property
    def full(self) -> bool:
        """More than HIGH_WATER queued: the client must wait."""
        return len(self.queue) > HIGH_WATER

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the program (dropped once its stdin is closed)."""
        if self.fd < 0 or self.broken or self.closing:
            return
        self.queue += data
        if self.watch is None:
            self._flush()

    def close_after_flush(self) -> None:
        """The client half-closed: the program reads EOF after what was queued."""
        self.closing = True
        if not self.queue:
            self.close()

    def _flush(self) -> None:
        while self.queue:
            try:
                written = os.write(self.fd, self.queue[:READ_BYTES])
            except (BlockingIOError, InterruptedError):
                if self.watch is None:
                    self.watch = self.conn.watch(self.fd, self._flush, writable=True)
                return
            except OSError:  # EPIPE: the program closed its stdin or exited
                self.broken = True
                self.queue.clear()
                break
            del self.queue[:written]
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.closing or self.broken:
            self.close()
        self.drained()

    def close(self) -> None:
        """Close portd's end now (idempotent)."""
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        self.queue.clear()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class PipeReader:
    """portd's end of the program's stdout; each chunk goes to ``deliver``."""

    def __init__(
        self,
        conn: Connection,
        fd: int,
        deliver: Callable[[bytes], object],
        ended: Callable[[], object],
    ) -> None:
        self.conn = conn
        self.fd = fd
        self.deliver = deliver
        self.ended = ended  # called once, at EOF
        self.watch: FdWatch | None = None
        os.set_blocking(fd, False)

    @property
    def at_eof(self) -> bool:
        """True once the program's stdout is closed (every writer of it)."""
        return self.fd < 0

    def resume(self) -> None:
        """Read the program's output (again)."""
        if self.watch is None and self.fd >= 0:
            self.watch = self.conn.watch(self.fd, self._readable)

    def pause(self) -> None:
        """Stop reading: the client is not reading."""
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.deliver(data)
            return
        self.close()
        self.ended()

    def close(self) -> None:
        """Close portd's end (idempotent)."""
        self.pause()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
