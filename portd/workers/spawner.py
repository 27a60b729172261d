"""The spawner: a small process forked from the parent before its event loop starts,
which forks every worker and tells the parent when one exits.

Why not start workers with exec: after ``[daemon] user`` drops root, the parent could
only start a worker the new user can exec and import from scratch, and restarting a
dead worker would fail wherever Python or portd is not readable by that user. Why not
fork the parent itself: by then it runs an event loop (its signal wakeup descriptor,
its epoll set) and may have threads. The spawner is forked while the parent is still
one thread with nothing running, drops privileges as the parent does, loads what a
worker runs, and from then on only forks: a worker starts in milliseconds, shares the
spawner's memory until it writes to it, and never needs to read a file to start.

The parent asks over a SOCK_SEQPACKET pair, one message per worker with the
descriptors it serves attached (SCM_RIGHTS): the worker's channel first. The spawner
answers ``{"spawned": ID, "pid": PID}``, and ``{"exited": PID, "code": N}`` (N < 0: the
signal that ended it) for every worker it reaps.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from portd.privileges import Identity

if TYPE_CHECKING:
    from portd.config import Config

MAX_FDS = 1024  # descriptors of one worker: its channel, its sockets, the shared memory
MAX_REQUEST = 4096
PR_SET_PDEATHSIG = 1


def start_spawner(
    identity: Identity | None, forget: Callable[[], None], config: Config
) -> tuple[int, socket.socket]:
    """Fork the spawner; return its pid and the parent's end of its line.

    ``forget`` runs in the spawner first: it closes what the spawner must not hold (the
    listening sockets: a socket the parent closes must close, not live on here).
    ``config``, loaded before any privilege drop, is what the first workers (and those
    started again in their place) serve, TLS contexts included: a key only root reads
    serves as it does in one process (see portd.workers.child.START_CONFIG).

    Raises:
        OSError: fork failed.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the spawner: never returns
        code = 70
        try:
            ours.close()
            forget()
            from portd.workers import child

            child.START_CONFIG = config
            code = _serve(theirs, identity)
        except BaseException:  # noqa: BLE001 - a portd bug: say what it was; the parent says the rest
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    return pid, ours


def _serve(line: socket.socket, identity: Identity | None) -> int:
    os.setpgid(0, 0)  # Ctrl-C in a terminal reaches the parent only
    _die_with_parent()
    # The parent decides what signals mean; the spawner ends when the parent's line
    # does (or with the parent, through PR_SET_PDEATHSIG).
    for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(ignored, signal.SIG_IGN)
    woken_r, woken_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(woken_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() through the pipe
    _load_what_workers_run()  # as root still: the new user may not read portd's files
    import gc

    gc.enable()  # paused by portd serve's start-up, which the spawner leaves here
    if identity is not None:
        from portd.privileges import drop_privileges

        drop_privileges(identity)
    while True:
        readable, _, _ = select.select([line.fileno(), woken_r], [], [])
        if woken_r in readable:
            while len(os.read(woken_r, 512)) == 512:
                pass
            _reap(line)
        if line.fileno() in readable:
            try:
                message, fds, _, _ = socket.recv_fds(line, MAX_REQUEST, MAX_FDS)
            except InterruptedError:
                continue
            except OSError:  # the parent is gone
                return 0
            if not message:  # the parent is gone; its workers drain on their own
                return 0
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                os._exit(_run_worker(line, (woken_r, woken_w), fds))
            for fd in fds:
                os.close(fd)
            line.send(json.dumps({"spawned": request["id"], "pid": pid}).encode())


def _reap(line: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        line.send(json.dumps({"exited": pid, "code": code}).encode())


def _run_worker(line: socket.socket, pipe: tuple[int, int], fds: list[int]) -> int:
    """In the forked worker: leave the spawner's world, then serve. Whatever happens,
    this returns (to os._exit): the spawner's loop must never go on in a worker."""
    import sys

    code = 70
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the worker's loop handles it
        line.close()
        for fd in pipe:
            os.close(fd)
        from portd.workers.child import run_worker

        code = run_worker(fds)
    except ConnectionError as exc:  # the parent gave up on it before its bootstrap
        print(f"portd: worker: {exc}", file=sys.stderr)
    except BaseException:  # noqa: BLE001 - a portd bug: say what it was, then exit
        import traceback

        traceback.print_exc()
    finally:
        # Buffered log lines go out before the exit that skips interpreter clean-up.
        sys.stderr.flush()
    return code


def _die_with_parent() -> None:
    """SIGKILL when the parent dies: a spawner left alone would fork for nobody (its
    workers then get their own SIGTERM, and drain)."""
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:
        os._exit(0)


def _load_what_workers_run() -> None:
    """Import now, while every file is readable, what a worker imports as it starts."""
    import importlib

    for module in (
        "anyio._backends._asyncio", "portd.workers.child", "portd.daemon", "portd.supervisor",
        "portd.metrics.process", "portd.workers.ids", "portd.workers.tally",
        "portd.handlers.files.directory", "ctypes",
    ):  # fmt: skip
        importlib.import_module(module)
    with contextlib.suppress(ImportError):  # the loop = "asyncio" host
        importlib.import_module("uvloop")
