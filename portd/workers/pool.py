"""Worker processes: starting one on its slot's sockets, hearing when it serves,
asking it for its numbers, and noticing (through a pidfd) when it exits.

A generation is the set of workers serving one config; a reload starts a new one and
lets the old one drain. A worker of the current generation that dies is started again
on the same slot (and so the same sockets) after a back-off that doubles from
RESTART_START_S to RESTART_MAX_S while workers keep dying young, and starts over once
one has served RESTART_STABLE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from portd.workers.channel import LineProtocol, Message

RESTART_START_S = 0.1
RESTART_MAX_S = 30.0
RESTART_STABLE_S = 10.0
READY_TIMEOUT_S = 60.0
ASK_TIMEOUT_S = 5.0


class Worker:
    """One worker process and its end of the channel."""

    def __init__(self, slot: int, generation: int, tally_slot: int) -> None:
        self.slot = slot
        self.generation = generation
        self.tally_slot = tally_slot
        self.pid = 0
        self.state = "starting"  # starting -> ready -> stopping -> exited
        self.started = time.monotonic()
        self.exit_code: int | None = None
        self.final: Message | None = None  # its numbers, as it reported them at exit
        self.ready = asyncio.get_running_loop().create_future()  # True once it serves
        self.exited = asyncio.Event()
        self.heard_all = asyncio.Event()  # its channel reached EOF: the final report is in
        self.channel: LineProtocol | None = None
        self._asked: dict[int, asyncio.Future[Message]] = {}
        self._ask_ids = itertools.count(1)
        self._process: subprocess.Popen[bytes] | None = None

    def describe(self) -> dict[str, Any]:
        """What ``portd status`` shows of it."""
        return {"worker": self.slot, "pid": self.pid, "generation": self.generation,
                "state": self.state, "up_s": round(time.monotonic() - self.started, 3)}  # fmt: skip

    def heard(self, message: Message) -> None:
        """A message from the worker."""
        if "reply" in message:
            future = self._asked.pop(message["reply"], None)
            if future is not None and not future.done():
                future.set_result(message.get("result", {}))
        elif message.get("event") == "ready":
            self.state = "ready"
            if not self.ready.done():
                self.ready.set_result(True)
        elif message.get("event") == "stopping":
            self.state = "stopping"
        elif message.get("event") == "final":
            self.final = message.get("status")

    def channel_lost(self) -> None:
        """The worker's end closed (it exited, or is about to)."""
        self.heard_all.set()
        for future in self._asked.values():
            if not future.done():
                future.set_exception(ConnectionError("the worker exited"))
        self._asked.clear()

    async def ask(self, op: str) -> Message:
        """The worker's answer to ``op`` (status, metrics).

        Raises:
            ConnectionError, TimeoutError: it exited, or did not answer in time.
        """
        if self.channel is None or self.state == "exited":
            raise ConnectionError("the worker exited")
        ask = next(self._ask_ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._asked[ask] = future
        self.channel.send({"ask": ask, "op": op})
        try:
            return await asyncio.wait_for(future, ASK_TIMEOUT_S)
        finally:
            self._asked.pop(ask, None)

    def signal(self, signum: int) -> None:
        """Send ``signum`` if it still runs."""
        if self._process is not None and self.state != "exited":
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    def describe_exit(self) -> dict[str, Any]:
        """How it ended, for the log: ``exit_code``, or ``signal`` by name."""
        code = self.exit_code
        if code is not None and code < 0:
            return {"signal": signal.Signals(-code).name}
        return {"exit_code": code}


def start_process(
    worker: Worker,
    boot: Mapping[str, Any],
    fds: Sequence[int],
    environ: Mapping[str, str],
    on_exit: Callable[[Worker], None],
) -> None:
    """Start ``worker``'s process with ``fds`` inherited and ``boot`` as its first message.

    Raises:
        OSError: the process could not be started (the worker stays "starting").
    """
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "portd.workers.child", str(theirs.fileno())],
            stdin=subprocess.DEVNULL,
            pass_fds=[theirs.fileno(), *fds],
            env=dict(environ),
            process_group=0,  # Ctrl-C reaches the parent, which decides what it means
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    worker._process = process
    worker.pid = process.pid
    worker.channel = LineProtocol(worker.heard, worker.channel_lost)
    ours.setblocking(False)
    watch_exit(loop, worker, process, on_exit)
    task = loop.create_task(_connect(loop, worker, ours, boot))
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[None]] = set()


async def _connect(
    loop: asyncio.AbstractEventLoop, worker: Worker, sock: socket.socket, boot: Mapping[str, Any]
) -> None:
    channel = worker.channel
    assert channel is not None
    try:
        await loop.create_unix_connection(lambda: channel, sock=sock)
    except OSError:
        sock.close()
        return
    channel.send(boot)


def watch_exit(
    loop: asyncio.AbstractEventLoop,
    worker: Worker,
    process: subprocess.Popen[bytes],
    on_exit: Callable[[Worker], None],
) -> None:
    """Call ``on_exit(worker)`` once the process has exited (and been reaped)."""
    pidfd = os.pidfd_open(process.pid)

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        worker.exit_code = process.wait()
        worker.state = "exited"
        if not worker.ready.done():
            worker.ready.set_result(False)
        task = loop.create_task(reported())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def reported() -> None:
        # The exit may be seen before the last lines on the channel are read: wait for
        # its end (the dead worker's side is closed, so it comes at once), then go on.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.heard_all.wait(), ASK_TIMEOUT_S)
        if worker.channel is not None:
            worker.channel.close()
        worker.exited.set()
        on_exit(worker)

    loop.add_reader(pidfd, exited)


class Backoff:
    """How long a slot waits before its worker is started again."""

    def __init__(self) -> None:
        self.delay_s = 0.0

    def next_delay(self, lived_s: float) -> float:
        """The wait after a worker that served ``lived_s`` died."""
        if lived_s >= RESTART_STABLE_S:
            self.delay_s = 0.0
        self.delay_s = min(max(self.delay_s * 2, RESTART_START_S), RESTART_MAX_S)
        return self.delay_s
