"""One file being received, written by worker threads: hashed as it is written, pushed
towards the disk as it grows, and given its final name only once it is durable.

Every method blocks on the file system, so the handler calls them off the event loop,
one at a time per file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
from collections.abc import Callable, Sequence

from portd.handlers.files.directory import ReceiveDirectory

WRITEBACK_WINDOW = 32 << 20
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
SYNC_FILE_RANGE_WRITE = 2


class DurableFile:
    """A temporary file that becomes a final one only when complete and durable.

    The temporary is created exclusively (never an existing entry, never through a
    symlink) with ``file_mode`` set by fchmod, so the umask cannot widen or narrow it.
    """

    def __init__(self, directory: ReceiveDirectory, stem: str, file_mode: int) -> None:
        """Create the temporary ``.portd-partial-STEM``.

        Raises:
            OSError: it could not be created (ENOSPC, EMFILE, EDQUOT, EACCES, ...).
        """
        self.directory = directory
        self.temp, self.fd = directory.create_temp(stem, file_mode)
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._started = 0  # writeback was started for bytes before this offset
        try:
            os.fchmod(self.fd, file_mode)
        except OSError:
            self.discard()
            raise

    def hash(self, chunks: Sequence[bytes]) -> None:
        """Add ``chunks`` to the running sha256; may run beside write() of the same chunks."""
        for chunk in chunks:
            self.sha256.update(chunk)

    def write(self, chunks: Sequence[bytes]) -> None:
        """Append ``chunks``; start writeback of each full window.

        Raises:
            OSError: ENOSPC, EDQUOT, EFBIG, EIO, ... (the file is left for discard()).
        """
        write_all(self.fd, chunks)
        self.size += sum(len(chunk) for chunk in chunks)
        if self.size - self._started >= WRITEBACK_WINDOW:
            self._push_writeback()

    def _push_writeback(self) -> None:
        """Start writeback of what was written since the last call, without waiting.

        While bytes still arrive, the disk is kept busy, so the final fsync has little
        left to do; fsync alone decides durability and reports any writeback error (a
        start-only sync_file_range never consumes one).
        """
        sync_file_range(self.fd, self._started, self.size - self._started, SYNC_FILE_RANGE_WRITE)
        self._started = self.size

    def commit(self, name: str) -> str:
        """fsync the file, link it to a free final name, remove the temporary, fsync the
        directory.

        Returns:
            The final name: ``name``, or ``name-N`` when ``name`` was taken.

        Raises:
            OSError: any step failed; the temporary is left for discard().
        """
        os.fsync(self.fd)
        self._close()
        final = self.directory.link_final(self.temp, name)
        self.directory.unlink(self.temp)
        self.directory.sync()
        return final

    def discard(self) -> None:
        """Close and remove the temporary; never raises (one that cannot be removed now
        is removed as stale at the next start)."""
        with contextlib.suppress(OSError):
            self._close()
        with contextlib.suppress(OSError):
            self.directory.unlink(self.temp)

    def _close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def write_all(fd: int, chunks: Sequence[bytes]) -> None:
    """writev every byte of ``chunks``, IOV_MAX buffers at a time, resuming short writes.

    Raises:
        OSError: the write failed.
    """
    views = [memoryview(chunk) for chunk in chunks if chunk]
    start = 0
    while start < len(views):
        written = os.writev(fd, views[start : start + IOV_MAX])
        if written == 0:
            raise OSError(errno.EIO, "write made no progress")
        while start < len(views) and written >= len(views[start]):
            written -= len(views[start])
            start += 1
        if written:
            views[start] = views[start][written:]


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (the os module has none); None where it is missing."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def sync_file_range(fd: int, offset: int, length: int, flags: int) -> None:
    """sync_file_range(2), as a hint: it does nothing where libc lacks it, and its errors
    are ignored (with SYNC_FILE_RANGE_WRITE alone it only starts writeback; fsync, which
    always follows, reports what went wrong)."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, flags)
