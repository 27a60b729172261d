"""Lifecycle: bind every listener (all or nothing), serve, reload on SIGHUP, drain on stop.

Binding happens before the event loop starts and before privileges are dropped, so a
config that cannot be served fails fast with its exit code and leaves no socket open.
Signals are handled with anyio; the data path itself is asyncio protocols (see
connections.py). The service manager hears READY=1 only once every listener serves.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from typing import Any

import anyio
from anyio.abc import TaskGroup

from portd.config import Config, DaemonConfig, ListenerConfig, load_config
from portd.control import ReloadFailure, open_control
from portd.daemon import take_held_reloads
from portd.errors import ConfigError, LoopUnavailableError, PortdError
from portd.listeners import Listener
from portd.logging import get_logger
from portd.privileges import Identity
from portd.reload import ReloadPlan, Start, plan_reload
from portd.sockets import open_listener_sockets
from portd.systemd import InheritedSocket, Notifier, match_inherited

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)
RESTART_ONLY_SETTINGS = (
    "log_format", "log_level", "loop", "user", "group", "control_socket", "control_socket_abstract",
)  # fmt: skip


class Supervisor:
    """Owns every listener of one config for the life of the daemon."""

    def __init__(
        self,
        config: Config,
        *,
        inherited: Sequence[InheritedSocket] = (),
        activation_only: bool = False,
        notifier: Notifier | None = None,
        overrides: dict[str, Any] | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.overrides = overrides or {}  # command-line [daemon] settings that outlive reloads
        self.listeners: list[Listener] = []
        self.retiring: list[Listener] = []
        self.log: Any = get_logger()
        self.notifier = notifier or Notifier({})
        self._inherited = list(inherited)
        self._activation_only = activation_only
        self._conn_ids = itertools.count(1)
        self._group: TaskGroup | None = None
        self._reload_lock = asyncio.Lock()
        self.started_at = time.monotonic()

    def bind_all(self) -> None:
        """Open every listener's sockets (or adopt inherited ones); all or nothing.

        Raises:
            ConfigError: --activation-only and some listeners were passed no socket.
            BindError: the first listener that could not be bound, naming it.
            PortdError: a handler could not start (its message names why).
        """
        claimed = match_inherited(
            [c for c in self.config.listeners if c.handler.listens], self._inherited
        )  # an inherited socket already listens: a handler that must not listen binds its own
        missing = [c for c in self.config.listeners if c.name not in claimed]
        if self._activation_only and missing:
            self._close_inherited()
            raise ConfigError([
                f"{c.label}: no socket was passed for it (--activation-only); give its "
                f"socket unit FileDescriptorName={c.name} or ListenStream= its address"
                for c in missing
            ])  # fmt: skip
        for unused in (
            s for s in self._inherited if not any(s.sock in v for v in claimed.values())
        ):
            self.log.warning(
                "inherited_socket_unused", name=unused.name, address=str(unused.address)
            )
            unused.sock.close()
        opened: list[Listener] = []
        try:
            for config in self.config.listeners:
                if config.name in claimed:
                    opened.append(self._listener(config, claimed.pop(config.name), "inherited"))
                else:
                    opened.append(self._listener(config, _bind(config, config.addresses), "bound"))
        except BaseException:
            for listener in opened:
                listener.close()
            for sockets in claimed.values():
                for sock in sockets:
                    sock.close()
            raise
        self.listeners = opened

    def _listener(self, config: ListenerConfig, sockets: list[Any], origin: str) -> Listener:
        try:
            return Listener(config, sockets, self._conn_ids.__next__, origin)
        except BaseException as exc:  # the handler could not start: its sockets go too
            for sock in sockets:
                sock.close()
            if isinstance(exc, PortdError):
                raise labelled(exc, config.label) from exc
            raise

    def _close_inherited(self) -> None:
        for inherited in self._inherited:
            inherited.sock.close()

    def drop_privileges(self) -> None:
        """Switch to [daemon] user/group, after handlers hand over what they made as root.

        Called inside the running loop, before any listener accepts: by then every module
        serving needs is imported, as root, whatever the target user may read.

        Raises:
            PrivilegeError: not root, or root could be regained.
        """
        from portd.privileges import drop_privileges

        if self.identity is None:
            return
        for listener in self.listeners:
            listener.handler.before_privilege_drop(self.identity.uid, self.identity.gid)
        drop_privileges(self.identity)
        self.log.info("privileges_dropped", uid=self.identity.uid, gid=self.identity.gid)

    def close(self) -> None:
        """Close every listener's sockets and handlers (idempotent)."""
        for listener in (*self.listeners, *self.retiring):
            listener.close()

    async def run(self) -> int:
        """Serve until a stop signal, reloading on SIGHUP, then drain.

        Returns:
            The exit code: 0 after a drain, 128+signal when a second signal cut it short.
        """
        daemon = self.config.daemon
        control = await open_control(
            daemon.control_socket, self.config.source, self.snapshot, self.reload, self.log
        )
        try:
            self.drop_privileges()
            return await self._serve(control.path if control is not None else "")
        finally:
            if control is not None:
                control.close()

    async def _serve(self, control_path: str) -> int:
        with anyio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
            async with anyio.create_task_group() as group:
                self._group = group
                await self.start()
                if take_held_reloads():  # asked for while binding: the receiver was not there
                    await self.reload()
                if control_path:
                    self.log.info("control_socket_ready", path=control_path)
                if self.notifier.watchdog_interval_s:
                    group.start_soon(self._keep_watchdog_fed, self.notifier.watchdog_interval_s)
                received = await self._serve_until_stop(signals)
                exit_code = await self._shut_down(signals, received)
                group.cancel_scope.cancel()
            return exit_code

    async def start(self) -> None:
        """Serve every bound listener on the running loop (after bind_all)."""
        asyncio.get_running_loop().set_exception_handler(self._on_loop_error)
        for listener in self.listeners:
            await listener.start()
        self.log.info("daemon_ready", listeners=len(self.listeners))
        self.notifier.ready(self.status())

    def snapshot(self) -> dict[str, Any]:
        """What ``portd status`` shows: every listener's numbers."""
        from portd import __version__

        return {
            "pid": os.getpid(),
            "version": __version__,
            "config": self.config.source,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "listeners": [listener.stats() for listener in self.listeners],
            "retiring": [listener.stats() for listener in self.retiring],
        }

    def status(self) -> str:
        """A one-line summary for systemctl status."""
        parts = [
            f"{x.config.name} {x.config.protocol} {x.addresses[0]}" for x in self.listeners[:8]
        ]
        more = f" and {len(self.listeners) - 8} more" if len(self.listeners) > 8 else ""
        return f"serving {len(self.listeners)} listeners: " + ", ".join(parts) + more

    async def _serve_until_stop(self, signals: AsyncIterator[signal.Signals]) -> signal.Signals:
        async for received in signals:
            if received in STOP_SIGNALS:
                return received
            await self.reload()
        raise AssertionError("signal receiver ended")  # pragma: no cover

    async def _shut_down(
        self, signals: AsyncIterator[signal.Signals], received: signal.Signals
    ) -> int:
        self.notifier.stopping()
        self.stop_accepting()
        everyone = [*self.listeners, *self.retiring]
        timeout_s = self.config.daemon.shutdown_timeout_s
        self.log.info(
            "shutdown_started",
            signal=received.name,
            connections=sum(listener.live for listener in everyone),
            timeout_s=timeout_s,
        )
        exit_code = 0
        async with anyio.create_task_group() as group:

            async def cut_short_on_second_signal() -> None:
                nonlocal exit_code
                async for again in signals:
                    if again in STOP_SIGNALS:
                        exit_code = 128 + again
                        group.cancel_scope.cancel()

            group.start_soon(cut_short_on_second_signal)
            await self.drain(timeout_s)
            group.cancel_scope.cancel()
        aborted = await self.abort_connections()
        self.log.info("shutdown_complete", aborted=aborted, exit_code=exit_code)
        return exit_code

    def stop_accepting(self) -> None:
        """Stop accepting on every listener (idempotent); live connections go on."""
        for listener in self.listeners:
            listener.stop_accepting()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting everywhere, then wait up to ``timeout_s`` for connections to end."""
        self.stop_accepting()
        with anyio.move_on_after(timeout_s):
            for listener in (*self.listeners, *self.retiring):
                await listener.wait_idle()

    async def abort_connections(self) -> int:
        """Close every live connection now and let their closing lines be written.

        Returns:
            How many connections were still open.
        """
        everyone = [*self.listeners, *self.retiring]
        aborted = sum(listener.abort_connections() for listener in everyone)
        for _ in range(3):  # connection_lost runs on the next loop iterations
            await asyncio.sleep(0)
        return aborted

    async def reload(self) -> ReloadFailure | None:
        """Apply the config file again; on any problem keep serving the old config.

        Reloads asked for at once (SIGHUP, the control socket) run one after the other.

        Returns:
            None when the new config is in force, else why not (for ``portd reload``).
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> ReloadFailure | None:
        self.notifier.reloading()
        self.log.info("reload_started", config=self.config.source)
        try:
            # Off the loop: reading the file, resolving names and importing handlers block.
            config = await anyio.to_thread.run_sync(load_config, self.config.source)
            config = replace(config, daemon=replace(config.daemon, **self.overrides))
            plan = plan_reload(self.listeners, config.listeners)
            started = self._open_started(plan.started)
        except Exception as exc:  # noqa: BLE001 - whatever fails, the old config keeps serving
            return self._reload_failed(exc)
        await self._commit(config, plan, started)
        return None

    def _reload_failed(self, exc: Exception) -> ReloadFailure:
        if isinstance(exc, PortdError):
            lines = exc.lines if isinstance(exc, ConfigError) else (str(exc),)
            self.log.error("reload_failed", error="; ".join(lines), kept=len(self.listeners))
            failure = ReloadFailure(exc.exit_code, tuple(lines))
        else:  # a portd bug: say so with its traceback, and go on serving
            reason = f"{type(exc).__name__}: {exc}"
            self.log.error("reload_failed", error=reason, kept=len(self.listeners), exc_info=exc)
            failure = ReloadFailure(70, (f"reload failed: {reason}",))
        self.notifier.ready(self.status())
        return failure

    def _open_started(self, starts: list[Start]) -> list[Listener]:
        """Bind what is new and build the listeners; all or nothing, reused sockets untouched."""
        bound: dict[str, list[Any]] = {}
        created: list[Listener] = []
        try:
            for start in starts:
                if start.missing:
                    bound[start.config.name] = _bind(start.config, start.missing)
            for start in starts:
                fresh = iter(bound.get(start.config.name, []))
                sockets = [_reused_or(start, address, fresh) for address in _addresses(start)]
                origin = "reused" if start.reused else "bound"
                try:
                    listener = Listener(start.config, sockets, self._conn_ids.__next__, origin)
                except PortdError as exc:
                    raise labelled(exc, start.config.label) from exc
                created.append(listener)
        except BaseException:
            for listener in created:
                listener.close_handler()
            for sockets in bound.values():
                for sock in sockets:
                    sock.close()
            raise
        return created

    async def _commit(self, config: Config, plan: ReloadPlan, started: list[Listener]) -> None:
        handed_over = {sock for start in plan.started for sock in start.reused.values()}
        for listener in plan.retired:
            listener.stop_accepting(keep=handed_over)
            self.retiring.append(listener)
            if self._group is not None:  # in-process callers without run() close at close()
                self._group.start_soon(self._retire, listener)
        by_name = {listener.config.name: listener for listener in [*plan.kept, *started]}
        for listener in started:
            await listener.start()
        self._warn_restart_only(self.config.daemon, config.daemon)
        self.config = config
        self.listeners = [by_name[c.name] for c in config.listeners]
        self.log.info(
            "reload_complete", kept=len(plan.kept), started=len(started), retired=len(plan.retired)
        )
        self.notifier.ready(self.status())

    async def _retire(self, listener: Listener) -> None:
        await listener.wait_idle()
        listener.close()
        self.retiring.remove(listener)
        self.log.info("listener_stopped", listener=listener.config.name)

    def _warn_restart_only(self, old: DaemonConfig, new: DaemonConfig) -> None:
        changed = [key for key in RESTART_ONLY_SETTINGS if getattr(old, key) != getattr(new, key)]
        if changed:
            self.log.warning("reload_needs_restart", settings=changed)

    async def _keep_watchdog_fed(self, interval_s: float) -> None:
        while True:  # runs on the loop: it pings only while the loop is responsive
            self.notifier.watchdog()
            await anyio.sleep(interval_s)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.log.error(
            "loop_error", message=context.get("message"), exc_info=context.get("exception")
        )


def labelled(exc: PortdError, label: str) -> PortdError:
    """The same error, its message led by the listener it concerns."""
    if isinstance(exc, ConfigError):
        return ConfigError([f"{label}: {line}" for line in exc.lines])
    error = PortdError(f"{label}: {exc}")
    error.exit_code = exc.exit_code
    return error


def _reused_or(start: Start, address: Any, fresh: Iterator[Any]) -> Any:
    sock = start.reused.get(address)
    return next(fresh) if sock is None else sock


def _addresses(start: Start) -> list[Any]:
    """The addresses a started listener serves, reused ones first in their old order."""
    return (
        [*start.reused, *start.missing]
        if start.config.bind.port == 0
        else list(start.config.addresses)
    )


def _bind(config: ListenerConfig, addresses: Sequence[Any]) -> list[Any]:
    return open_listener_sockets(
        addresses,
        config.protocol,
        config.label,
        config.backlog,
        skip_missing_ipv6=config.bind.is_wildcard,
        listen=config.handler.listens,
    )


def run_daemon(
    config: Config,
    *,
    inherited: Sequence[InheritedSocket] = (),
    activation_only: bool = False,
    identity: Identity | None = None,
    overrides: dict[str, Any] | None = None,
) -> int:
    """Bind (or adopt), drop privileges, serve until stopped, and return the exit code.

    Raises:
        BindError: a listener could not be bound (nothing stays open).
        ConfigError: --activation-only without a socket for every listener.
        PortdError: the event loop asked for is not installed, or dropping privileges failed.
    """
    supervisor = Supervisor(
        config,
        inherited=inherited,
        activation_only=activation_only,
        notifier=Notifier(),
        overrides=overrides,
        identity=identity,
    )
    supervisor.bind_all()
    try:
        options = loop_options(config.daemon.loop)
        return anyio.run(supervisor.run, backend="asyncio", backend_options=options)
    except BaseExceptionGroup as group:  # a task group wrapped an expected failure
        expected = group.subgroup(PortdError)
        if expected is None or expected.split(PortdError)[1] is not None:
            raise
        raise _first_leaf(expected) from None
    finally:
        supervisor.close()


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def loop_options(choice: str) -> dict[str, Any]:
    """anyio backend options for ``auto``, ``uvloop`` or ``asyncio``.

    Raises:
        LoopUnavailableError: ``uvloop`` was asked for and is not installed (exit 78).
    """
    if choice == "asyncio":
        return {}
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise LoopUnavailableError(
                '[daemon] loop = "uvloop" but uvloop is not installed; pip install uvloop, '
                'or loop = "auto"'
            ) from None
        return {}
    return {"loop_factory": uvloop.new_event_loop}
