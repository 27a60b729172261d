"""Which processes hold which sockets: /proc/PID/fd, with each holder's name, user and
systemd unit.

As ``ss -p`` does, one pass reads every process's descriptors; a socket shared after a
fork has several holders. Without root, other users' descriptors are unreadable: their
sockets have no holder here, and ``hidden`` says that some were not visible.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

PROC = Path("/proc")
COMM_MAX = 15  # the kernel truncates a task's name (comm) to 15 bytes


class Holder(NamedTuple):
    """One descriptor of one process that holds a socket."""

    pid: int
    fd: int
    program: str


class Holders:
    """Socket inode -> the processes holding it (sorted by pid), from one pass over /proc."""

    def __init__(self, wanted: set[int] | None = None, pids: Sequence[int] | None = None) -> None:
        """Scan every process, or only ``pids``; stop once each inode of ``wanted`` is found."""
        self.by_inode: dict[int, list[Holder]] = {}
        self.hidden = False  # some process's descriptors could not be read
        self._names: dict[int, str] = {}
        self._scan(wanted, _pids() if pids is None else pids)

    def of(self, inode: int) -> list[Holder]:
        """The holders of a socket, lowest pid first ([] when none is visible)."""
        return self.by_inode.get(inode, [])

    def _scan(self, wanted: set[int] | None, pids: Sequence[int]) -> None:
        if wanted is not None and not wanted:
            return
        remaining = set(wanted) if wanted is not None else None
        for pid in pids:
            try:
                entries = list(os.scandir(PROC / str(pid) / "fd"))
            except PermissionError:
                self.hidden = True
                continue
            except OSError:  # exited meanwhile
                continue
            for entry in entries:
                inode = _socket_inode(entry.path)
                if inode is None or (wanted is not None and inode not in wanted):
                    continue
                holder = Holder(pid, int(entry.name), self._program(pid))
                self.by_inode.setdefault(inode, []).append(holder)
                if remaining is not None:
                    remaining.discard(inode)
            if remaining is not None and not remaining:
                break
        for holders in self.by_inode.values():
            holders.sort()

    def _program(self, pid: int) -> str:
        if pid not in self._names:
            self._names[pid] = program_name(pid) or "?"
        return self._names[pid]


def _pids() -> list[int]:
    # os, not pathlib, in this module: one pass touches every descriptor of every process.
    return sorted(int(name) for name in os.listdir(PROC) if name.isdigit())  # noqa: PTH208


def _socket_inode(path: str) -> int | None:
    try:
        target = os.readlink(path)  # noqa: PTH115
    except OSError:
        return None
    if target.startswith("socket:[") and target.endswith("]"):
        return int(target[8:-1])
    return None


def program_name(pid: int) -> str | None:
    """The process's name as ps and ss show it (comm), completed from its command line
    when the kernel truncated it; None once it has exited."""
    try:
        comm = (PROC / str(pid) / "comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    if len(comm) < COMM_MAX:
        return comm
    try:
        argv0 = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return comm
    name = Path(argv0).name
    return name if name.startswith(comm) else comm


def user_name(uid: int | None) -> str | None:
    """``www-data`` for 33; the number itself when no passwd entry names it."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def process_uid(pid: int) -> int | None:
    """The real uid of a process (the owner of its /proc directory), None once gone."""
    try:
        return (PROC / str(pid)).stat().st_uid
    except OSError:
        return None


def systemd_unit(pid: int) -> str | None:
    """The systemd unit a process runs in, from its cgroup: ``nginx.service``, a user's
    ``app.service (user 1000)``, a ``session-3.scope``; None outside systemd's tree."""
    try:
        text = (PROC / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # The unified hierarchy (0::), else systemd's own v1 one (hybrid and legacy setups).
    paths = [line.split(":", 2)[2] for line in text.splitlines()
             if line.startswith("0::") or ":name=systemd:" in line]  # fmt: skip
    parts: list[str] = []
    for path in paths:
        parts = [part for part in path.split("/") if part]
        if any(part.endswith((".service", ".scope")) for part in parts):
            break
    units = [part for part in parts if part.endswith((".service", ".scope"))]
    if not units:
        return None
    manager = next((part for part in parts if part.startswith("user@")), None)
    if manager is not None and units[-1] != manager:
        return f"{units[-1]} (user {manager[5:].removesuffix('.service')})"
    return units[-1]
