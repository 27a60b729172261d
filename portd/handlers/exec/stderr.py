"""A program's stderr as log lines (``stderr = "log"``), bounded.

Each line is one ``program_stderr`` event on the connection's logger (so it carries the
listener, ``conn_id`` and peer), at most MAX_LINE_BYTES of it (the rest is counted as
``cut_bytes``), at most MAX_LINES per connection; past that the pipe is still read (a
program must never block on a full stderr) but nothing more is kept, and one
``program_stderr_dropped`` line says how many lines went unlogged. At most one
partial line is held, so a program that writes without newlines costs MAX_LINE_BYTES.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from portd.handlers.base import FdWatch

MAX_LINE_BYTES = 1024
MAX_LINES = 100
READ_BYTES = 65536
DRAIN_READS = 16  # at close: at most 1 MiB more


class StderrLog:
    """Reads one program's stderr pipe (non-blocking) into log lines."""

    def __init__(self, fd: int, log: Any) -> None:
        self.fd = fd
        self.log = log
        self.partial = bytearray()
        self.cut = 0  # bytes of the current line beyond MAX_LINE_BYTES
        self.logged = 0
        self.dropped = 0
        self.watch: FdWatch | None = None
        os.set_blocking(fd, False)

    def readable(self) -> None:
        """Read what is there; at EOF, log the last partial line and stop."""
        try:
            data = os.read(self.fd, READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        *lines, rest = data.split(b"\n")
        for line in lines:
            self._line(line)
        self._keep(rest)

    def _keep(self, piece: bytes) -> None:
        room = MAX_LINE_BYTES - len(self.partial)
        self.partial += piece[:room]
        self.cut += max(0, len(piece) - room)

    def _line(self, piece: bytes) -> None:
        self._keep(piece)
        line, cut = bytes(self.partial), self.cut
        self.partial.clear()
        self.cut = 0
        if self.logged >= MAX_LINES:
            self.dropped += 1
            return
        self.logged += 1
        fields = {"cut_bytes": cut} if cut else {}
        self.log.info("program_stderr", line=line.decode("utf-8", "replace"), **fields)

    def close(self) -> None:
        """Stop reading (idempotent): the last partial line and the drop count are logged."""
        if self.fd < 0:
            return
        # What is still in the pipe (the program's exit may be seen first), bounded: a
        # leftover of its session may hold the pipe open and keep writing.
        for _ in range(DRAIN_READS):
            try:
                data = os.read(self.fd, READ_BYTES)
            except OSError:  # EAGAIN: nothing more now
                break
            if not data:
                break
            self._take(data)
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1
        if self.partial or self.cut:
            self._line(b"")
        if self.dropped:
            self.log.info("program_stderr_dropped", lines=self.dropped, kept=MAX_LINES)
