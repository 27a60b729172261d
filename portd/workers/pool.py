"""Worker processes: starting one (through the spawner) on its slot's sockets, hearing
when it serves, asking it for its numbers, and hearing when it exits.

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
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from portd.errors import EX_SOFTWARE, WorkerError
from portd.workers.channel import LineProtocol, Message

_BACKGROUND: set[asyncio.Task[None]] = set()  # held until done: the loop keeps weak refs
MAX_SPAWNER_MESSAGE = 4096
RESTART_START_S = 0.1
RESTART_MAX_S = 30.0
RESTART_STABLE_S = 10.0
READY_TIMEOUT_S = 60.0
ASK_TIMEOUT_S = 5.0


class Worker:
    """One worker process and its end of the channel."""

    def __init__(
        self, slot: int, generation: int, tally_slot: int, on_exit: Callable[[Worker], None]
    ) -> None:
        self.slot = slot
        self.on_exit = on_exit
        self.generation = generation
        self.tally_slot = tally_slot
        self.pid = 0
        self.state = "starting"  # starting -> ready -> stopping -> exited
        self.started = time.monotonic()
        self.exit_code: int | None = None
        self.final: Message | None = None  # its numbers, as it reported them at exit
        self.last: dict[str, Message] = {}  # its last answer to each question
        self.ready = asyncio.get_running_loop().create_future()  # True once it serves
        self.exited = asyncio.Event()
        self.not_accepting = asyncio.Event()  # it said it stopped accepting, or exited
        self.heard_all = asyncio.Event()  # its channel reached EOF: the final report is in
        self.channel: LineProtocol | None = None
        self._asked: dict[int, asyncio.Future[Message]] = {}
        self._ask_ids = itertools.count(1)

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
            self.not_accepting.set()
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
            self.last[op] = answer = await asyncio.wait_for(future, ASK_TIMEOUT_S)
            return answer
        finally:
            self._asked.pop(ask, None)

    def last_numbers(self) -> Message | None:
        """Its numbers as it last told them: at exit, else in its last answer (a worker
        killed outright says nothing at the end; its counts since then are lost)."""
        return self.final or self.last.get("metrics") or self.last.get("status")

    def signal(self, signum: int) -> None:
        """Send ``signum`` if it still runs."""
        if self.pid and self.state != "exited":
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def cut_short(self) -> None:
        """A second SIGTERM, which cuts its drain short, once it heard the first: two
        sent before it handled one would arrive as one (signals do not queue)."""
        await self.not_accepting.wait()
        self.signal(signal.SIGTERM)

    def ended(self, code: int) -> None:
        """The spawner reaped it (``code`` < 0: the signal that ended it)."""
        self.exit_code = code
        self.state = "exited"
        self.not_accepting.set()
        if not self.ready.done():
            self.ready.set_result(False)
        task = asyncio.get_running_loop().create_task(self._reported())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _reported(self) -> None:
        # The exit may be heard before the last lines on the channel are read: wait for
        # its end (the dead worker's side is closed, so it comes at once), then go on.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.heard_all.wait(), ASK_TIMEOUT_S)
        if self.channel is not None:
            self.channel.close()
        self.exited.set()
        self.on_exit(self)

    def describe_exit(self) -> dict[str, Any]:
        """How it ended, for the log: ``exit_code``, or ``signal`` by name."""
        code = self.exit_code
        if code is not None and code < 0:
            return {"signal": signal.Signals(-code).name}
        return {"exit_code": code}


class Spawner:
    """The parent's end of the spawner's line (portd.workers.spawner): it asks for a
    worker, hears its pid, and hears when a worker exits."""

    def __init__(self, pid: int, line: socket.socket, lost: Callable[[], None]) -> None:
        self.pid = pid
        self.line = line
        self.lost = lost
        self.workers: dict[int, Worker] = {}  # by pid
        self._spawning: dict[int, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hear the spawner on ``loop``."""
        self._loop = loop
        self.line.setblocking(False)
        loop.add_reader(self.line.fileno(), self._readable)

    async def spawn(self, worker: Worker, fds: Sequence[int]) -> None:
        """Fork ``worker`` with ``fds`` (its channel's end first); its pid once forked.

        Raises:
            OSError: the spawner is gone, or refused the descriptors.
        """
        assert self._loop is not None
        request = next(self._ids)
        future = self._loop.create_future()
        self._spawning[request] = future
        try:
            socket.send_fds(self.line, [json.dumps({"id": request}).encode()], list(fds))
            worker.pid = await asyncio.wait_for(future, ASK_TIMEOUT_S)
        finally:
            self._spawning.pop(request, None)
        self.workers[worker.pid] = worker

    def _readable(self) -> None:
        while True:
            try:
                message = self.line.recv(MAX_SPAWNER_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                self.close()
                self.lost()
                return
            said = json.loads(message)
            if "spawned" in said:
                future = self._spawning.get(said["spawned"])
                if future is not None and not future.done():
                    future.set_result(said["pid"])
            elif "exited" in said:
                worker = self.workers.pop(said["exited"], None)
                if worker is not None:
                    worker.ended(said["code"])

    def close(self) -> None:
        """Stop hearing the spawner and close the line (it exits on its own)."""
        if self._loop is not None and self.line.fileno() >= 0:
            self._loop.remove_reader(self.line.fileno())
        self.line.close()
        for future in self._spawning.values():
            if not future.done():
                future.set_exception(ConnectionError("the spawner is gone"))


async def start_worker(
    worker: Worker, spawner: Spawner, boot: Mapping[str, Any], fds: Sequence[int]
) -> None:
    """Fork ``worker`` with ``fds`` after its channel (the bootstrap names them by
    position, from 1), then send it ``boot``.

    Raises:
        OSError, TimeoutError: the spawner is gone, or did not answer.
    """
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = worker.channel = LineProtocol(worker.heard, worker.channel_lost)
    try:
        await spawner.spawn(worker, [theirs.fileno(), *fds])
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    await loop.create_unix_connection(lambda: channel, sock=ours)
    channel.send(boot)


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


class StartFailure(NamedTuple):
    """Why a generation of workers did not come up, and the daemon's exit code for it."""

    error: WorkerError
    exit_code: int


def start_error(worker: Worker) -> WorkerError:
    how = worker.describe_exit()
    said = f"exit code {how['exit_code']}" if "exit_code" in how else f"signal {how['signal']}"
    return WorkerError(f"worker {worker.slot} ended ({said}) before it served; see its log")


def failure_code(worker: Worker) -> int:
    """The exit code of a daemon whose first workers failed: the worker's own when it
    is one of portd's (a config problem the parent could not see), else 70."""
    code = worker.exit_code
    return code if code is not None and 64 <= code <= 78 else EX_SOFTWARE
