"""Byte counts, digests and the progress line of a shell transfer (``-v``)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from portd.shell.threads import start_thread

PROGRESS_AFTER_S = 1.0
PROGRESS_EVERY_S = 0.5
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in UNITS:
        if count < 1024 or unit == UNITS[-1]:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class Direction:
    """Bytes moved one way, with a sha256 when asked for (it costs CPU per byte)."""

    __slots__ = ("count", "digest")

    def __init__(self, hashed: bool) -> None:
        self.count = 0
        self.digest: Any = None
        if hashed:
            import hashlib

            self.digest = hashlib.sha256()

    def add(self, data: bytes | memoryview) -> None:
        """Count (and hash) one chunk."""
        self.count += len(data)
        if self.digest is not None:
            self.digest.update(data)

    def describe(self) -> str:
        """'12 bytes sha256 ab12...'."""
        text = f"{self.count} bytes"
        if self.digest is not None:
            text += f" sha256 {self.digest.hexdigest()}"
        return text


class Transfer:
    """Both directions of one connection, plus a progress line on a terminal."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.received = Direction(verbose)
        self.sent = Direction(verbose)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._progress: threading.Thread | None = None
        if sys.stderr.isatty():
            self._progress = start_thread(self._show_progress)

    def _show_progress(self) -> None:
        if self._stop.wait(PROGRESS_AFTER_S):
            return
        shown = False
        while not self._stop.wait(PROGRESS_EVERY_S):
            elapsed = time.monotonic() - self.started
            rate = (self.received.count + self.sent.count) / elapsed
            line = (
                f"\r{human_bytes(self.received.count)} in, {human_bytes(self.sent.count)} out, "
                f"{human_bytes(rate)}/s   "
            )
            sys.stderr.write(line)
            sys.stderr.flush()
            shown = True
        if shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def finish(self) -> None:
        """Stop the progress line; with -v, print the totals."""
        self._stop.set()
        if self._progress is not None:
            self._progress.join()
        if self.verbose:
            elapsed = time.monotonic() - self.started
            print(
                f"received {self.received.describe()}; sent {self.sent.describe()}; "
                f"{elapsed:.2f} s",
                file=sys.stderr,
            )
