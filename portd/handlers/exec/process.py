"""Starting a program and knowing when it ends, the same way on asyncio and uvloop.

A program is started with ``os.posix_spawn`` (glibc's clone(CLONE_VFORK): the parent
pays ~90 us of CPU; see benchmarks/exec_spawn.py), or with ``subprocess.Popen`` when it
needs what posix_spawn cannot do from Python (a working directory, another user; Popen
forks for a user switch, ~550 us). Either way:

- the program leads a session of its own (setsid), so its whole process group can be
  signalled (a shell pipeline dies together) and a terminal's Ctrl-C reaches portd only;
- its signals start at their defaults and unblocked (Python ignores SIGPIPE; exec keeps
  an ignored signal ignored), except glibc's two internal real-time signals, which its
  posix_spawn leaves ignored and every glibc program takes back at start;
- it gets exactly stdin, stdout and stderr: every other descriptor of portd is
  close-on-exec (Python opens them so; :func:`close_inherited_descriptors` marks any
  portd inherited from its own parent);
- its end is seen through a pidfd (readable once it exits): no SIGCHLD handler, no
  watcher thread, no event loop's child watcher, so no other code can reap it first.

Its exit status is read without reaping (``waitid(WNOWAIT)``) so the process group id
stays pinned while portd may still signal leftovers; :meth:`Child.reap` reaps it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

# Every catchable signal back to its default in the program (setsigdef).
DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
FIRST_FREE_FD = 3


class Program(NamedTuple):
    """What to run: the resolved executable, argv, and how it must be started."""

    path: str
    argv: tuple[str, ...]
    cwd: str | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def needs_popen(self) -> bool:
        """posix_spawn from Python cannot chdir or switch user."""
        return self.cwd is not None or self.uid is not None or self.gid is not None


class ExitStatus(NamedTuple):
    """How a program ended: its exit code, or the signal that killed it."""

    code: int | None
    signal: str | None

    @property
    def killed(self) -> bool:
        """True when a signal ended it."""
        return self.signal is not None

    def fields(self) -> dict[str, Any]:
        """For the connection_closed line."""
        return {"exit_code": self.code, "exit_signal": self.signal}


class Child:
    """A started program: its pid, a pidfd to watch, and its process group to signal."""

    __slots__ = ("_popen", "pid", "pidfd", "reaped", "started", "status")

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None) -> None:
        self.pid = pid
        self._popen = popen
        self.started = time.monotonic()
        self.status: ExitStatus | None = None
        self.reaped = False
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.kill_group(signal.SIGKILL)
            os.waitpid(pid, 0)
            self.reaped = True
            raise

    @property
    def running_ms(self) -> float:
        """Milliseconds since it started."""
        return round((time.monotonic() - self.started) * 1000, 1)

    def kill_group(self, signum: int) -> None:
        """Signal the program's whole process group (its leader is unreaped until
        :meth:`reap`, so the group id cannot name anyone else)."""
        if self.reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def exited(self) -> ExitStatus | None:
        """Its status once it has exited (not reaped), else None."""
        if self.status is None:
            try:
                info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped by someone else: say so honestly
                info = None
                self.status = ExitStatus(None, "unknown")
            if info is not None:
                self.status = _status(info)
        return self.status

    def reap(self) -> None:
        """Reap it (it must have exited) and close the pidfd; idempotent."""
        if self.reaped:
            return
        self.reaped = True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.pidfd)
        if self._popen is not None:  # Popen must not reap (or warn about) it later
            self._popen.returncode = self.status.code if self.status else -1
            self._popen = None


def _status(info: Any) -> ExitStatus:
    if info.si_code == os.CLD_EXITED:
        return ExitStatus(info.si_status, None)
    try:
        name = signal.Signals(info.si_status).name
    except ValueError:
        name = f"signal {info.si_status}"
    return ExitStatus(None, name)


def spawn(program: Program, stdio: Sequence[int], env: Mapping[str, str]) -> Child:
    """Start ``program`` with ``stdio`` as its descriptors 0, 1 and 2.

    The caller keeps ``stdio`` and closes its copies once this returns.

    Raises:
        OSError: the program could not be started (not found, not executable, E2BIG,
            out of processes or memory); nothing is left running.
    """
    # A descriptor below 3 would be overwritten by the dup2 of another: move it up (portd
    # started with a closed stdin accepts its first socket as fd 0).
    moved = {fd: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_FREE_FD)
             for fd in set(stdio) if fd < FIRST_FREE_FD}  # fmt: skip
    used = [moved.get(fd, fd) for fd in stdio]
    try:
        if program.needs_popen:
            return _spawn_popen(program, used, env)
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(used)]
        pid = os.posix_spawn(program.path, program.argv, env, file_actions=actions,
                             setsid=True, setsigdef=DEFAULT_SIGNALS, setsigmask=())  # fmt: skip
        return Child(pid, None)
    finally:
        for fd in moved.values():
            os.close(fd)


def _spawn_popen(program: Program, stdio: list[int], env: Mapping[str, str]) -> Child:
    groups: list[int] | None = [] if (program.uid, program.gid) != (None, None) else None
    popen = subprocess.Popen(
        program.argv, executable=program.path, stdin=stdio[0], stdout=stdio[1],
        stderr=stdio[2], env=env, cwd=program.cwd, user=program.uid, group=program.gid,
        extra_groups=groups, start_new_session=True, close_fds=True,
    )  # fmt: skip
    return Child(popen.pid, popen)


def close_inherited_descriptors() -> None:
    """Mark every descriptor above 2 close-on-exec: a program gets only its stdio, never
    something portd inherited from whoever started it."""
    try:
        names = os.listdir("/proc/self/fd")  # noqa: PTH208 - names, not paths
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd >= FIRST_FREE_FD:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
