"""A test server's machinery: config, sockets, listener, and the loop that runs it.

The same path as the daemon, minus the daemon: options are validated by the config
loader, and portd.assembly builds the handler, binds the sockets and makes the one
:class:`~portd.listeners.Listener` that serves. No Supervisor: it would install an
exception handler on the test's event loop.

Sync mode runs the listener on a private event loop in a daemon thread
(:class:`LoopThread`); start and stop are handed over with a threading.Event and
``loop.call_soon_threadsafe``, never a sleep. Async mode runs it on the caller's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from portd.config import ListenerConfig
from portd.endpoints.base import Address
from portd.handlers.base import Handler
from portd.testing.leaks import LeakReport, describe_connection, pending_tasks, release_finished
from portd.testing.records import Records

if TYPE_CHECKING:
    from portd.listeners import Listener

SOURCE = "portd.testing"
THREAD_PREFIX = "portd-testing"
STOP_TIMEOUT_S = 10.0
LOOP_TURNS_AFTER_ABORT = 4  # connection_lost and transport closes run on later iterations
LOOP_TURNS_TO_ADOPT = 10  # an accepted socket becomes a connection within a few iterations


@dataclass(frozen=True, slots=True)
class ServeSpec:
    """Everything ``serve()`` was asked for."""

    handler: str | type[Handler] = "echo"
    bind: str = "127.0.0.1:0"
    protocol: str = "tcp"
    options: Mapping[str, Any] = field(default_factory=dict)
    check_leaks: bool = False
    leak_grace_s: float = 1.0
    log_level: str | None = None
    loop: str = "asyncio"
    start_timeout_s: float = 10.0
    raise_handler_errors: bool = True
    tls: bool | str = False  # True, or a TLS fault (portd.testing.tls)
    tls_client_auth: bool = False  # mutual TLS: clients need a test CA certificate

    @property
    def tls_mode(self) -> str | None:
        """valid, a TLS fault's name, or None for plaintext."""
        from portd.testing.tls import tls_mode

        return tls_mode(self.tls) if self.tls is not False else None

    @property
    def handler_name(self) -> str:
        """The handler's registered name (or a class's ``name``)."""
        return self.handler if isinstance(self.handler, str) else self.handler.name


def build_config(spec: ServeSpec) -> ListenerConfig:
    """The validated listener, with the daemon's one-line messages for bad options.

    Raises:
        ConfigError: unknown handler or option, wrong value, bad bind.
    """
    from portd.config import parse_config

    handler = spec.handler
    options: Mapping[str, Any] = spec.options
    mode = spec.tls_mode
    if mode is not None:
        from portd.testing.tls import merged, tls_options

        instead, added = tls_options(mode, spec.tls_client_auth)
        handler = instead or handler
        options = merged(options, added)
    table = {"bind": spec.bind, "protocol": spec.protocol, **options}
    if isinstance(handler, str):
        config = parse_config({"listener": [{**table, "handler": handler}]}, SOURCE).listeners[0]
    else:
        config = config_for_class(handler, table)
    if mode is not None:
        from portd.testing.tls import finish_context

        finish_context(mode, config.tls)
    return config


def config_for_class(handler: type[Handler], table: Mapping[str, Any]) -> ListenerConfig:
    """A listener served by a Handler class that need not be registered.

    The listener keys are checked by the config loader (as a blackhole listener, which
    serves both protocols and sets no limits of its own), the handler's options against
    its declared Options; the handler's default limits apply where the table sets none.

    Raises:
        ConfigError: every problem, one line each.
    """
    from dataclasses import replace

    from portd.config import LISTENER_OPTIONS, default_name, parse_config
    from portd.errors import ConfigError, OptionError
    from portd.options import defaults

    listener_keys = {option.name for option in LISTENER_OPTIONS}
    base = {key: value for key, value in table.items() if key in listener_keys}
    config = parse_config({"listener": [{**base, "handler": "blackhole"}]}, SOURCE).listeners[0]
    known = {option.name: option for option in handler.options}
    settings = defaults(handler.options)
    problems = []
    for key, value in table.items():
        if key in listener_keys:
            continue
        if key not in known:
            problems.append(f"{key} = {value!r}: unknown key; allowed: {', '.join(sorted(known))}")
            continue
        try:
            settings[key] = known[key].check(value)
        except OptionError as exc:
            problems.append(f"{key} = {value!r}: {exc}")
    if config.protocol not in handler.protocols:
        problems.append(
            f"protocol = {config.protocol!r}: {handler.name!r} serves "
            f"{', '.join(sorted(handler.protocols))} only"
        )
    if problems:
        raise ConfigError([f"{SOURCE}: handler {handler.name!r}: {line}" for line in problems])
    name = table.get("name") or default_name(handler.name, config.endpoint)
    limits = config.limits._replace(
        **{key: value for key, value in handler.default_limits.items() if key not in table}
    )
    return replace(config, name=name, handler=handler, settings=settings, limits=limits)


class Running:
    """One test server from bound sockets to closed: listener, records, leak findings."""

    def __init__(self, spec: ServeSpec) -> None:
        self.spec = spec
        self.config = build_config(spec)
        self.records = Records()
        self.listener: Listener | None = _make_listener(self.config, spec, self.records)
        self.sockets: list[socket.socket] = list(self.listener.sockets)
        self.addresses: tuple[Address, ...] = tuple(self.listener.addresses)
        self.label = f"{spec.handler_name} server on {self.addresses[0]} ({spec.protocol})"
        self.leaked_connections: list[str] = []

    async def start(self) -> None:
        """Serve on the running loop; on failure everything is closed."""
        if self.listener is None:
            return
        try:
            await self.listener.start()
        except BaseException:
            self.close_now()
            raise

    async def stop(self) -> None:
        """Stop accepting, give clients ``leak_grace_s`` to finish, close the rest."""
        listener = self.listener
        if listener is None:
            self.close_now()
            return
        try:
            listener.stop_accepting()
            for _ in range(LOOP_TURNS_TO_ADOPT):  # accepted connections become connections
                if listener.live == len(listener.connections):
                    break
                await asyncio.sleep(0)
            held = release_finished(listener)
            grace_s = self.spec.leak_grace_s if self.spec.check_leaks else 0.0
            if held and grace_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.wait_idle(), grace_s)
                held = release_finished(listener)
            self.leaked_connections = [describe_connection(conn) for conn in held]
            listener.abort_connections(reset=False)
            for _ in range(LOOP_TURNS_AFTER_ABORT):
                await asyncio.sleep(0)
        finally:
            self.close_now()

    def close_now(self) -> None:
        """Abort connections and close sockets and handler at once (idempotent)."""
        if self.listener is not None:
            self.listener.abort_connections(reset=False)
            self.listener.close()
        for sock in self.sockets:
            sock.close()

    def report(self, tasks: list[str], threads: list[str]) -> LeakReport:
        """The leak findings, once stopped (the socket scan runs here)."""
        from portd.testing.leaks import sockets_on

        kind = socket.SOCK_STREAM if self.config.protocol == "tcp" else socket.SOCK_DGRAM
        return LeakReport(
            self.label,
            tuple(self.leaked_connections),
            tuple(tasks),
            tuple(threads),
            tuple(sockets_on(self.addresses, kind)),
        )


def _make_listener(config: ListenerConfig, spec: ServeSpec, records: Records) -> Listener:
    from portd.assembly import assemble
    from portd.testing.logs import make_logger

    logger = make_logger(spec.log_level).bind(listener=config.name)
    (listener,) = assemble([config], {}, itertools.count(1).__next__, log=lambda _: logger)
    listener.observers.append(records)
    return listener


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """``asyncio`` or ``uvloop`` (which must be installed).

    Raises:
        ValueError: another name.
    """
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ValueError(f"loop {name!r}: expected 'asyncio' or 'uvloop'")


class LoopThread:
    """Runs a server on a private event loop in a daemon thread (sync mode)."""

    def __init__(self, running: Running) -> None:
        self.running = running
        where = getattr(running.addresses[0], "port", None) or id(running)
        self.name = f"{THREAD_PREFIX}-{running.spec.handler_name}-{where}"
        self.tasks: list[str] = []
        self._factory = loop_factory(running.spec.loop)
        self._ready = threading.Event()
        self._error: BaseException | None = None  # starting failed
        self._broken: BaseException | None = None  # the loop failed after it started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        """Return once the server serves.

        Raises:
            Whatever starting the listener raised; TimeoutError if it never answered.
        """
        self._thread.start()
        if not self._ready.wait(self.running.spec.start_timeout_s):
            self.stop()
            raise TimeoutError(f"{self.running.label} did not start in time")
        if self._error is not None:
            self._thread.join(STOP_TIMEOUT_S)
            raise self._error

    def stop(self) -> list[str]:
        """Stop the server and the thread; return the threads still running.

        Raises:
            Whatever broke the server's loop after it started (a portd bug).
        """
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(STOP_TIMEOUT_S)
        if self._broken is not None:
            raise self._broken
        from portd.testing.leaks import threads_named

        return threads_named(self.name)

    def _run(self) -> None:
        loop = self._factory()
        from concurrent.futures import ThreadPoolExecutor

        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix=f"{self.name}-executor"))
        try:
            loop.run_until_complete(self._main(loop))
            leftover = [task for task in asyncio.all_tasks(loop) if not task.done()]
            self.tasks = pending_tasks(leftover, portd_only=False)
            if leftover:  # let the cancelled ones unwind before the loop goes
                loop.run_until_complete(asyncio.wait(leftover, timeout=STOP_TIMEOUT_S))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        except BaseException as exc:  # noqa: BLE001 - reported to the thread that waits
            if self._ready.is_set():
                self._broken = exc
            else:
                self._error = self._error or exc
        finally:
            self.running.close_now()
            loop.close()
            self._ready.set()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stop = asyncio.Event()
        try:
            await self.running.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the starting thread
            self._error = exc
            return
        self._loop = loop
        self._ready.set()
        await self._stop.wait()
        await self.running.stop()
