"""Connection ids unique across a daemon's workers, their restarts and reloads.

The parent makes one 8-byte counter in shared memory (a memfd every worker inherits);
a worker takes a block of BLOCK ids at a time under a POSIX record lock, so the lock is
taken once per BLOCK connections and the ids in the log never repeat.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

BLOCK = 1024
COUNTER = struct.Struct("=q")


def create_id_counter() -> int:
    """A new counter at 0 (the first id handed out is 1); the caller owns the fd."""
    fd = os.memfd_create("portd-connection-ids", os.MFD_CLOEXEC)
    os.ftruncate(fd, COUNTER.size)
    return fd


class SharedIds:
    """The ids one worker hands out, from the counter at ``fd`` (inherited)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, COUNTER.size)
        self._next = self._end = 0

    def next_conn_id(self) -> int:
        """The next id of this worker's block; a new block when it is used up."""
        if self._next >= self._end:
            self._take_block()
        conn_id = self._next
        self._next += 1
        return conn_id

    def _take_block(self) -> None:
        # A record lock belongs to the process, so workers sharing the inherited open
        # file exclude each other (flock would not: it belongs to the open file).
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            (last,) = COUNTER.unpack_from(self._map, 0)
            COUNTER.pack_into(self._map, 0, last + BLOCK)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        self._next, self._end = last + 1, last + BLOCK + 1
