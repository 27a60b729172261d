"""The receive directory, held open: every file operation of file-receive is relative to
its descriptor, so renaming or replacing the path after start cannot redirect a write,
and no operation ever follows a symbolic link.

A directory is opened once per process and shared by every listener that names it (a
listener replaced by a reload and its draining predecessor alike), and locked against
other processes, so removing stale temporaries at the first open never touches a live
transfer. A daemon's workers share their parent's lock: the parent passes its locked
descriptor (the very open file that holds the lock), and a worker neither locks again
nor removes temporaries, which may be another worker's transfers in progress.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

from portd.errors import ConfigError

TEMP_PREFIX = ".portd-partial-"
DIRECTORY_MODE = 0o700
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
SEQUENTIAL_SUFFIXES = 100  # name, name-1 ... name-99; then random suffixes
RANDOM_SUFFIX_TRIES = 16
_OPEN_PROBLEMS = {
    errno.ELOOP: "is a symbolic link (not followed)",
    errno.ENOTDIR: "is not a directory",
    errno.ENOENT: "does not exist and its parent is missing",
    errno.EWOULDBLOCK: "is in use by another process",
}
_HELD: dict[tuple[int, int], ReceiveDirectory] = {}  # by (st_dev, st_ino)
_HELD_LOCK = threading.Lock()
_FROM_PARENT: dict[tuple[int, int], int] = {}  # a worker's: locked descriptors its parent passed


def held_descriptors() -> list[int]:
    """The locked descriptors of the directories this process holds (a parent passes
    them to its workers)."""
    with _HELD_LOCK:
        return [held.fd for held in _HELD.values()]


def adopt_descriptors(fds: list[int]) -> None:
    """A worker's start: its parent holds the locks on these directories for it."""
    for fd in fds:
        stat = os.fstat(fd)
        _FROM_PARENT[(stat.st_dev, stat.st_ino)] = fd


def hold_directory(path: str) -> tuple[ReceiveDirectory, int]:
    """The directory at ``path``, created with mode 0700 when missing (not its parents).

    The first hold in this process locks it and removes stale temporaries; later holds
    share that one (each is released with :meth:`ReceiveDirectory.release`).

    Returns:
        The directory and how many stale temporaries were removed (0 when shared).

    Raises:
        ConfigError: it cannot be created, opened or locked (one line naming it).
    """
    with _HELD_LOCK:
        try:
            created = _make_directory(path)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise _open_error(path, exc) from exc
        stat = os.fstat(fd)
        key = (stat.st_dev, stat.st_ino)
        held = _HELD.get(key)
        if held is not None:
            os.close(fd)
            held.holders += 1
            return held, 0
        parents = _FROM_PARENT.get(key)
        if parents is not None:  # the parent's open file: its lock is ours already
            os.close(fd)
            _HELD[key] = ReceiveDirectory(path, os.dup(parents), created, key)
            return _HELD[key], 0
        held = _HELD[key] = ReceiveDirectory(path, fd, created, key)
        return held, held.remove_stale()


def check_directory_usable(path: str) -> str | None:
    """What :func:`hold_directory` would refuse about ``path``, found without creating,
    opening or locking anything (``portd check``); None when it looks usable.

    A lock held by another process is not checked: the daemon being reloaded holds it.
    """
    target = Path(path)
    try:
        if target.is_symlink():
            return _problem(path, _OPEN_PROBLEMS[errno.ELOOP])
        if not target.exists():
            if not target.parent.is_dir():
                return _problem(path, _OPEN_PROBLEMS[errno.ENOENT])
            return None
        if not target.is_dir():
            return _problem(path, _OPEN_PROBLEMS[errno.ENOTDIR])
    except OSError as exc:
        return _problem(path, exc.strerror or str(exc))
    return None


def _problem(path: str, reason: str) -> str:
    return f"file-receive: directory = {json.dumps(path)}: {reason}"


def _open_error(path: str, exc: OSError) -> ConfigError:
    code = exc.errno or 0
    if code == errno.ENOTDIR and Path(path).is_symlink():  # O_DIRECTORY spoke first
        code = errno.ELOOP
    return ConfigError([_problem(path, _OPEN_PROBLEMS.get(code) or exc.strerror or str(exc))])


class ReceiveDirectory:
    """An open directory, locked against other processes; see :func:`hold_directory`."""

    def __init__(self, path: str, fd: int, created: bool, key: tuple[int, int]) -> None:
        """Take over ``fd``: set the mode of a directory just created, then lock it.

        Raises:
            ConfigError: another process holds the lock (``fd`` is closed).
        """
        self.path, self.fd, self.created, self.key = path, fd, created, key
        self.holders = 1
        try:
            if created:  # mkdir's mode passed through the umask: make it exact
                os.fchmod(fd, DIRECTORY_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise _open_error(path, exc) from exc

    def remove_stale(self) -> int:
        """Remove temporaries left by a crash; return how many were removed."""
        removed = 0
        for name in os.listdir(self.fd):  # noqa: PTH208 - pathlib cannot list a descriptor
            if name.startswith(TEMP_PREFIX):
                try:
                    os.unlink(name, dir_fd=self.fd)  # unlinkat: a symlink goes, not its target
                except (IsADirectoryError, PermissionError, FileNotFoundError):
                    continue
                removed += 1
        return removed

    def free_bytes(self) -> int:
        """Bytes available to unprivileged users on the directory's file system."""
        stats = os.fstatvfs(self.fd)
        return stats.f_bavail * stats.f_frsize

    def create_temp(self, stem: str, mode: int) -> tuple[str, int]:
        """Create a new temporary file exclusively; never opens an existing entry.

        Returns:
            Its name and a write-only descriptor the caller closes.

        Raises:
            OSError: the file could not be created (ENOSPC, EMFILE, EDQUOT, ...).
        """
        name = TEMP_PREFIX + stem
        for _ in range(RANDOM_SUFFIX_TRIES):
            try:
                fd = os.open(name, TEMP_FLAGS, mode, dir_fd=self.fd)
            except FileExistsError:  # planted or left over: pick another, never reuse it
                name = f"{TEMP_PREFIX}{stem}-{secrets.token_hex(4)}"
                continue
            return name, fd
        raise FileExistsError(errno.EEXIST, "no free temporary name", name)

    def link_final(self, temp: str, name: str) -> str:
        """Give the file ``temp`` the name ``name`` without ever replacing an entry.

        linkat fails with EEXIST when any entry (even a dangling symlink) has the name,
        so the next candidate is tried: ``name-1``, ``name-2`` ... (before an extension).

        Returns:
            The name used.

        Raises:
            OSError: no free name, or the link failed.
        """
        for candidate in _candidates(name):
            try:
                os.link(
                    temp, candidate, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False
                )
            except FileExistsError:
                continue
            return candidate
        raise FileExistsError(errno.EEXIST, "no free name", name)

    def unlink(self, name: str) -> None:
        """Remove an entry, ignoring one that is already gone."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def sync(self) -> None:
        """Make created, linked and removed entries durable."""
        os.fsync(self.fd)

    def release(self) -> None:
        """Drop one hold; the last closes the descriptor, which releases the lock."""
        with _HELD_LOCK:
            self.holders -= 1
            if self.holders == 0:
                del _HELD[self.key]
                os.close(self.fd)
                self.fd = -1


def _make_directory(path: str) -> bool:
    """Create the directory (not its parents); False when something exists there."""
    try:
        Path(path).mkdir(DIRECTORY_MODE)
    except FileExistsError:
        return False
    return True


def _candidates(name: str) -> Iterator[str]:
    yield name
    stem, dot, extension = name.rpartition(".")
    if not stem:
        stem, dot, extension = name, "", ""
    for n in range(1, SEQUENTIAL_SUFFIXES):
        yield f"{stem}-{n}{dot}{extension}"
    for _ in range(RANDOM_SUFFIX_TRIES):
        yield f"{stem}-{secrets.token_hex(4)}{dot}{extension}"
