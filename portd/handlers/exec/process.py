"""Starting a program and knowing when it ends, the same way on asyncio and uvloop.

Programs start in worker threads (:class:`Spawner`), never on the event loop: glibc's
posix_spawn returns only once the child has exec'd, which on a busy machine takes
milliseconds the loop must not stand still for. The spawn itself is glibc's
``posix_spawn`` through ctypes (``libc``: the GIL is released, ~90 us of the parent's
CPU), or ``subprocess.Popen`` for a user switch (it forks: ~550 us) or where the C
library lacks the functions. See benchmarks/exec_spawn.py for the figures. Either way:

- the program leads a session of its own (setsid), so its whole process group can be
  signalled (a shell pipeline dies together) and a terminal's Ctrl-C reaches portd only;
- its signals start at their defaults and unblocked (Python ignores SIGPIPE; exec keeps
  an ignored signal ignored), except glibc's two internal real-time signals, which its
  posix_spawn leaves ignored and every glibc program takes back at start;
- it gets exactly stdin, stdout and stderr (closefrom(3); Popen's close_fds);
- its end is seen through a pidfd (readable once it exits): no SIGCHLD handler, no
  watcher thread, no event loop's child watcher, so no other code can reap it first.

Its exit status is read without reaping (``waitid(WNOWAIT)``) so the process group id
stays pinned while portd may still signal leftovers; :meth:`Child.reap` reaps it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from portd.handlers.exec import libc

FIRST_FREE_FD = 3
SPAWN_THREADS = 4  # programs being exec'd at once; each waits in vfork, not on a CPU


class Program(NamedTuple):
    """What to run: the resolved executable, argv, and how it must be started."""

    path: str
    argv: tuple[str, ...]
    cwd: str | None = None
    uid: int | None = None
    gid: int | None = None
    prepared: libc.Prepared | None = None  # the posix_spawn parts made once (see with_spawn)

    def with_spawn(self) -> Program:
        """The same, prepared for posix_spawn when it can start it (no user switch, and
        the C library has the functions); otherwise Popen starts it."""
        if self.uid is not None or self.gid is not None or not libc.AVAILABLE:
            return self
        return self._replace(prepared=libc.Prepared(self.path, self.argv, self.cwd))


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
    """Start ``program`` with ``stdio`` as its descriptors 0, 1 and 2 (blocking: call it
    from a worker thread). The caller keeps ``stdio`` and closes its copies afterwards.

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
        if program.prepared is None:
            return _spawn_popen(program, used, env)
        return Child(program.prepared.spawn(env, used), None)
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


Done = Callable[["Child | OSError"], object]


class _Job(NamedTuple):
    program: Program
    stdio: tuple[int, ...]
    env: Mapping[str, str]
    clock: Any
    done: Done
    close_after: Callable[[], object]


class Spawner:
    """Starts programs in worker threads and hands each result to the loop.

    ``in_flight`` holds children started whose result the loop has not taken yet, so a
    closing listener can kill those too. The threads start with the first spawn and
    end at :meth:`close`.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.in_flight: set[Child] = set()

    def start(
        self,
        program: Program,
        stdio: Sequence[int],
        env: Mapping[str, str],
        *,
        clock: Any,
        done: Done,
        close_after: Callable[[], object],
    ) -> None:
        """Spawn in a thread; ``done(child or OSError)`` runs on the loop (``clock``);
        ``close_after()`` releases the caller's descriptors once the program has them."""
        if not self._threads:
            for index in range(SPAWN_THREADS):
                thread = threading.Thread(target=self._work, name=f"portd-spawn-{index}",
                                          daemon=True)  # fmt: skip
                thread.start()
                self._threads.append(thread)
        self._jobs.put(_Job(program, tuple(stdio), env, clock, done, close_after))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._run(job)

    def _run(self, job: _Job) -> None:
        program, stdio, env, clock, done, close_after = job
        result: Child | OSError
        try:
            result = spawn(program, stdio, env)
        except OSError as exc:
            result = exc
        finally:
            close_after()
        if isinstance(result, Child):
            with self._lock:
                self.in_flight.add(result)
        try:
            clock.call_soon_threadsafe(self._deliver, done, result)
        except RuntimeError:  # the loop is closed: nobody will take it
            if isinstance(result, Child):
                result.kill_group(signal.SIGKILL)

    def _deliver(self, done: Done, result: Child | OSError) -> None:
        if isinstance(result, Child):
            with self._lock:
                self.in_flight.discard(result)
        done(result)

    def close(self) -> list[Child]:
        """Wait for spawns under way; return the children no one took (kill them)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []
        with self._lock:
            left, self.in_flight = list(self.in_flight), set()
        return left
