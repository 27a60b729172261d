"""The runner's child processes: spawning, process groups, draining stderr, reaping.

Servers run in their own session (process group), so stopping one also stops what it
forked (socat forks a child per connection or peer); the runner registers itself as
a child subreaper so those orphans come back to it and are reaped rather than left
as zombies.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import resource
import select
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import psutil

STOP_TIMEOUT_S = 5.0
REAP_POLL_S = 0.01
NOFILE_WANTED = 65536
PR_SET_CHILD_SUBREAPER = 36
SPAWNED_PIDS: set[int] = set()  # every process this run started itself


class LogTail:
    """Drains a process's stderr in a thread, keeping the last lines and noting markers.

    Draining matters: a server logging a line per connection into a full pipe would
    block, and the benchmark would measure our reading instead of its serving.
    """

    def __init__(self, stream: IO[bytes], markers: Sequence[bytes] = ()) -> None:
        self.lines: collections.deque[bytes] = collections.deque(maxlen=40)
        self.seen_at: dict[bytes, float] = {}
        self._markers = tuple(markers)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.append(line)
            for marker in self._markers:
                if marker not in self.seen_at and marker in line:
                    with self._changed:
                        self.seen_at[marker] = time.monotonic()
                        self._changed.notify_all()
        with self._changed:
            self.seen_at[b""] = time.monotonic()  # end of stream
            self._changed.notify_all()

    def wait_for(self, marker: bytes, timeout_s: float) -> float | None:
        """When ``marker`` was first read (monotonic), or None on EOF or timeout."""
        with self._changed:
            self._changed.wait_for(lambda: marker in self.seen_at or b"" in self.seen_at, timeout_s)
            return self.seen_at.get(marker)

    def text(self) -> str:
        """The last lines read, for error messages."""
        return b"".join(self.lines).decode("utf-8", "replace")

    def join(self, timeout_s: float) -> None:
        """Wait for the stream to end."""
        self._thread.join(timeout_s)


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen, remembering the pid so reap_orphans leaves it to Popen."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **popen)
    SPAWNED_PIDS.add(proc.pid)
    return proc


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it if it lingers, reap all."""
    try:
        members = [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        members = []
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT_S)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait(STOP_TIMEOUT_S)
    _reap(members)
    reap_orphans()


def read_line(stream: IO[bytes], timeout_s: float) -> bytes:
    """One line a child writes and flushes whole; b"" on EOF or after ``timeout_s``."""
    readable, _, _ = select.select([stream], [], [], timeout_s)
    return stream.readline() if readable else b""


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _reap(pids: Sequence[int]) -> None:
    """Collect forked children that were re-parented to us (we are their subreaper)."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours (no subreaper) or already reaped
                break
            if done:
                break
            time.sleep(REAP_POLL_S)


def reap_orphans() -> None:
    """Reap zombie children we did not spawn: orphans re-parented to us while running
    (a socat child's ``cat`` outliving it, say). Our own processes are left to Popen."""
    for child in psutil.Process().children():
        try:
            orphan = child.pid not in SPAWNED_PIDS and child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            continue
        if orphan:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, os.WNOHANG)


def become_subreaper() -> bool:
    """Ask Linux to re-parent our descendants' orphans to us; False if it refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def nofile_limit() -> int:
    """The RLIMIT_NOFILE to give servers that hold many sockets: NOFILE_WANTED, or as
    close as our hard limit allows (raising it needs CAP_SYS_RESOURCE)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(NOFILE_WANTED, hard)
