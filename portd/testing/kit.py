"""A handler author's test kit: a fake connection, a manual clock, a recording endpoint.

Sessions are plain objects driven by callbacks, so they are tested without sockets or
an event loop: give a session a :class:`FakeConnection`, feed it bytes, and look at
what it wrote and how it ended; move a :class:`ManualClock` to fire its timers. portd's
own handler tests use exactly these.

    conn = FakeConnection()
    session = MyHandler(settings).open_session(conn)
    conn.session = session          # lets the fake pause the session like a full peer
    session.data_received(b"ping")
    assert conn.written == b"pong"
    conn.clock.advance(5.0)         # timers due within 5 s fire, in order
    assert conn.ending == "close"
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from portd.endpoints.base import Peer
from portd.endpoints.inet import inet_peer
from portd.handlers.base import StreamSession


class ManualTimer:
    """A timer of a ManualClock."""

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]):
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Do not fire."""
        self.cancelled = True


class ManualClock:
    """Loop time that moves only when told; due timers fire in time order as it moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.timers: list[ManualTimer] = []
        self.soon: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def time(self) -> float:
        """The current (manual) loop time."""
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> ManualTimer:
        """Fire ``callback(*args)`` once the clock reaches ``when``."""
        timer = ManualTimer(when, callback, args)
        self.timers.append(timer)
        return timer

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> ManualTimer:
        """Fire ``callback(*args)`` ``delay`` seconds from now."""
        return self.call_at(self.now + delay, callback, *args)

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        """Queue ``callback(*args)`` for the next :meth:`advance` (or :meth:`run_soon`)."""
        self.soon.append((callback, args))

    def run_soon(self) -> None:
        """Run what call_soon_threadsafe queued, in order."""
        while self.soon:
            callback, args = self.soon.pop(0)
            callback(*args)

    def advance(self, seconds: float = 0.0) -> None:
        """Move time forward, firing every timer due by then, earliest first."""
        self.run_soon()
        target = self.now + seconds
        while due := [t for t in self.timers if not t.cancelled and t.when <= target]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback(*timer.args)
            self.run_soon()
        self.now = target

    def run(self, until: float = float("inf")) -> None:
        """Fire timers until none is due by ``until`` (time jumps from one to the next)."""
        self.run_soon()
        while due := [t for t in self.timers if not t.cancelled and t.when <= until]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback(*timer.args)
            self.run_soon()

    @property
    def pending(self) -> list[ManualTimer]:
        """Timers not fired and not cancelled."""
        return [t for t in self.timers if not t.cancelled]


class RecordingLog:
    """Stands in for a bound structlog logger; keeps ``(level, event, fields)``."""

    def __init__(self, **context: Any) -> None:
        self.context = context
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def bind(self, **fields: Any) -> RecordingLog:
        """This same recorder (bound fields are kept in ``context``)."""
        self.context.update(fields)
        return self

    def _record(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self.events.append((level, event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        """Record at debug."""
        self._record("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Record at info."""
        self._record("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Record at warning."""
        self._record("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Record at error."""
        self._record("error", event, fields)

    def named(self, event: str) -> list[dict[str, Any]]:
        """The fields of every recorded ``event``."""
        return [fields for _, name, fields in self.events if name == event]


class FakeConnection:
    """A Connection that records what a session does, and can play a peer that does
    not read: with ``high_water`` set, written bytes queue up and pause the session
    until :meth:`drain`.

    ``written`` holds every byte written, ``chunks`` each write; ``ending`` says how
    the session ended the connection (``close``, ``abort``, ``reset``), None while open.
    """

    def __init__(
        self,
        *,
        peer: Peer | None = None,
        listener: str = "test",
        conn_id: int = 1,
        draining: bool = False,
        high_water: int | None = None,
        clock: Any = None,
    ) -> None:
        self.peer: Peer = peer if peer is not None else inet_peer(("127.0.0.1", 40000))
        self.listener = listener
        self.conn_id = conn_id
        self.draining = draining
        self.high_water = high_water
        self.clock: Any = clock if clock is not None else ManualClock()
        self.log: Any = RecordingLog(listener=listener, conn_id=conn_id, peer=str(self.peer))
        self.session: StreamSession | None = None
        self.written = bytearray()
        self.chunks: list[bytes] = []
        self.queued = 0
        self.paused = False
        self.reading = True
        self.eof_sent = False
        self.ending: str | None = None
        self.reason = ""  # what reset() was told
        self.tasks: list[asyncio.Task[Any]] = []
        self.local_address: Any = ("127.0.0.1", 7)
        self.fields: dict[str, Any] = {}  # what annotate() added
        self.holds = 0  # holds taken and not released
        self.watches: dict[tuple[int, bool], Callable[[], object]] = {}
        self.tls: Any = None  # a TLSInfo to play a TLS connection

    @property
    def writes(self) -> int:
        """How many writes."""
        return len(self.chunks)

    @property
    def closed(self) -> bool:
        """Closed after its queued bytes."""
        return self.ending == "close"

    @property
    def aborted(self) -> bool:
        """Aborted or reset."""
        return self.ending in ("abort", "reset")

    @property
    def done(self) -> bool:
        """The session ended the exchange (closed, aborted, reset or half-closed)."""
        return self.ending is not None or self.eof_sent

    def write(self, data: bytes) -> None:
        """Record ``data``; past ``high_water`` queued, pause the session."""
        assert self.ending is None, "write after the connection ended"
        self.written += data
        self.chunks.append(bytes(data))
        if self.high_water is not None:
            self.queued += len(data)
            if self.queued > self.high_water and not self.paused:
                self.paused = True
                if self.session is not None:
                    self.session.pause_writing()

    def drain(self) -> None:
        """The peer reads everything queued: resume the session if it was paused."""
        self.queued = 0
        if self.paused:
            self.paused = False
            if self.session is not None:
                self.session.resume_writing()

    def get_write_buffer_size(self) -> int:
        """Bytes queued and not read by the (fake) peer."""
        return self.queued

    def is_closing(self) -> bool:
        """True once the session ended the connection."""
        return self.ending is not None

    def write_eof(self) -> None:
        """Record the half-close."""
        self.eof_sent = True

    def close(self) -> None:
        """Record a close (the first ending counts)."""
        self.ending = self.ending or "close"

    def abort(self) -> None:
        """Record an abort."""
        self.ending = self.ending or "abort"

    def reset(self, reason: str = "") -> None:
        """Record a reset (and its reason, for the connection_closed line)."""
        self.ending = self.ending or "reset"
        self.reason = self.reason or reason

    def pause_reading(self) -> None:
        """Record that reading stopped."""
        self.reading = False

    def resume_reading(self) -> None:
        """Record that reading resumed."""
        self.reading = True

    def start_task(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[Any]:
        """Run ``coro`` on the running loop (tests of task-using sessions are async)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    sockname: Any = ("127.0.0.1", 7000)  # where the fake client connected

    def connect(
        self,
        endpoint: Any,
        protocol_factory: Callable[[], Any],
        *,
        ssl: Any = None,
        server_hostname: str | None = None,
    ) -> Any:
        """Connect for real, on the running loop (tests of a proxy's session are async)."""
        loop = asyncio.get_running_loop()
        return endpoint.open_stream(
            loop, protocol_factory, ssl=ssl, server_hostname=server_hostname
        )

    def lend_socket(self) -> None:
        """A fake has no socket to lend: the session relays."""
        return

    def reclaim_socket(self) -> bool:
        """Nothing was lent."""
        return False

    def hold(self) -> Callable[[], None]:
        """Count a hold (``holds``) until the returned release is called."""
        self.holds += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.holds -= 1

        return release

    def annotate(self, **fields: Any) -> None:
        """Record the fields for the connection_closed line (``fields``)."""
        self.fields.update(fields)

    def watch(self, fd: int, callback: Callable[[], object], writable: bool = False) -> FakeWatch:
        """Record the watch (``watches``); :meth:`fire` calls its callback."""
        self.watches[(fd, writable)] = callback
        return FakeWatch(self.watches, (fd, writable))

    def fire(self, fd: int, writable: bool = False) -> None:
        """Play ``fd`` becoming readable (writable): call its watch's callback."""
        self.watches[(fd, writable)]()


class FakeWatch:
    """A watch of a FakeConnection: cancelling forgets it."""

    def __init__(self, watches: dict[tuple[int, bool], Any], key: tuple[int, bool]) -> None:
        self.watches, self.key = watches, key

    def cancel(self) -> None:
        """Forget the watch."""
        self.watches.pop(self.key, None)


class RecordingEndpoint:
    """A DatagramEndpoint that records what a handler sends."""

    def __init__(self, *, accept: bool = True) -> None:
        self.log: Any = RecordingLog()
        self.sent: list[tuple[bytes, Peer]] = []
        self.accept = accept

    def send(self, data: bytes, peer: Peer) -> bool:
        """Record the datagram; returns ``accept`` (False plays a full send buffer)."""
        if self.accept:
            self.sent.append((bytes(data), peer))
        return self.accept

    clock: Any = None  # set one (a ManualClock) for handlers that keep timers
    max_sessions = 1024
    watched: dict[Any, Callable[[], object]]

    def watch_socket(self, sock: Any, readable: Callable[[], object]) -> None:
        """Record the watch: call ``watched[sock]()`` to play its readiness."""
        self.__dict__.setdefault("watched", {})[sock] = readable

    def unwatch_socket(self, sock: Any) -> None:
        """Forget the watch."""
        self.__dict__.setdefault("watched", {}).pop(sock, None)
