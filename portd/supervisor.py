"""Lifecycle of one config's listeners: bind (all or nothing), start, reload, drain.

Binding happens before the event loop starts and before privileges are dropped, so a
config that cannot be served fails fast with its exit code and leaves no socket open.
The process around it (signals, sd_notify, the watchdog, the control socket, the
privilege drop, the loop) is portd.daemon's.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, NamedTuple, Protocol

import anyio

from portd.assembly import SocketPlan, assemble, plan_taken
from portd.config import Config, DaemonConfig, ListenerConfig, load_config
from portd.control import ReloadFailure
from portd.errors import EX_SOFTWARE, ConfigError, PortdError
from portd.limits import Tally
from portd.listeners import Listener
from portd.listeners.stats import add_stats, fold_into, group_by_name
from portd.logging import get_logger
from portd.metrics.histogram import Histogram
from portd.reload import ReloadPlan, plan_reload
from portd.systemd import InheritedSocket, match_inherited

RESTART_ONLY_SETTINGS = (
    "log_format", "log_level", "loop", "user", "group", "control_socket", "control_socket_abstract",
    "workers", "metrics",
    "toxiproxy_api", "toxiproxy_api_remote",
)  # fmt: skip
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]


class Shared(Protocol):
    """What a worker shares with the daemon's other workers (see portd.workers.child)."""

    def next_conn_id(self) -> int:
        """A connection id no other worker of the daemon hands out."""

    def tally(self, config: ListenerConfig) -> Tally | None:
        """Where the listener counts its live connections for the whole daemon."""


class PreparedReload(NamedTuple):
    """A new config, checked and bound, not serving yet (see :meth:`Supervisor.prepare`)."""

    config: Config
    plan: ReloadPlan
    started: list[Listener]


class Supervisor:
    """Owns every listener of one config for the life of the daemon."""

    def __init__(
        self,
        config: Config,
        *,
        inherited: Sequence[InheritedSocket] = (),
        activation_only: bool = False,
        overrides: dict[str, Any] | None = None,
        shared: Shared | None = None,
        given: Mapping[str, Sequence[socket.socket]] | None = None,
    ) -> None:
        """``inherited``: sockets passed by the service manager, matched to listeners;
        ``given``: a worker's sockets, by listener, exactly as its parent made them;
        ``shared``: what a worker shares with the daemon's other workers."""
        self.config = config
        self._given = given
        self.overrides = overrides or {}  # command-line [daemon] settings that outlive reloads
        self.listeners: list[Listener] = []
        self.retiring: list[Listener] = []
        self.log: Any = get_logger()
        self._inherited = list(inherited)
        self._activation_only = activation_only
        self.shared = shared
        self._next_conn_id = shared.next_conn_id if shared else itertools.count(1).__next__
        self.retired: dict[str, dict[str, Any]] = {}  # final numbers of ended listeners
        self.spawn: Spawn | None = None  # runs background work (retiring listeners)
        self._reload_lock = asyncio.Lock()
        self.started_at = time.monotonic()

    def bind_all(self) -> None:
        """Build every handler, then open every listener's sockets (or adopt inherited
        ones); all or nothing.

        Raises:
            ConfigError: --activation-only and some listeners were passed no socket.
            BindError, PortdError: every listener that could not be bound or started.
        """
        if self._given is not None:
            self._take_given(self._given)
            return
        configs = self.config.listeners
        # An inherited socket already listens: a handler that must not listen binds its own.
        claimed = match_inherited([c for c in configs if c.handler.listens], self._inherited)
        missing = [c for c in configs if c.name not in claimed]
        if self._activation_only and missing:
            self._close_inherited()
            raise ConfigError([
                f"{c.label}: no socket was passed for it (--activation-only); give its "
                f"socket unit FileDescriptorName={c.name} or ListenStream= its address"
                for c in missing
            ])  # fmt: skip
        taken = {sock for sockets in claimed.values() for sock in sockets}
        for unused in (s for s in self._inherited if s.sock not in taken):
            self.log.warning(
                "inherited_socket_unused", name=unused.name, address=str(unused.address),
                reason="no listener has its name, protocol and kind, or its address",
            )  # fmt: skip
            unused.sock.close()
        plans = {name: plan_taken(sockets, "inherited") for name, sockets in claimed.items()}
        try:
            self.listeners = self._assemble(configs, plans)
        except BaseException:
            for sock in taken:
                sock.close()
            raise

    def _take_given(self, given: Mapping[str, Sequence[socket.socket]]) -> None:
        taken = [sock for sockets in given.values() for sock in sockets]
        missing = [c.label for c in self.config.listeners if c.name not in given]
        try:
            if missing:
                raise ConfigError(
                    [f"{label}: the parent passed no socket for it" for label in missing]
                )
            plans = {name: plan_taken(list(sockets), "parent") for name, sockets in given.items()}
            self.listeners = self._assemble(self.config.listeners, plans)
        except BaseException:
            for sock in taken:
                sock.close()
            raise

    def _assemble(
        self,
        configs: Sequence[ListenerConfig],
        plans: Mapping[str, SocketPlan],
        previous: Mapping[str, Listener] | None = None,
    ) -> list[Listener]:
        tally = self.shared.tally if self.shared is not None else None
        made = assemble(configs, plans, self._next_conn_id, previous=previous, tally=tally)
        if self.config.daemon.metrics:
            for listener in made:
                listener.durations = Histogram()
        return made

    def next_conn_id(self) -> int:
        """The next connection id (listeners made outside the config share the count,
        unique across the daemon's workers)."""
        return self._next_conn_id()

    def _close_inherited(self) -> None:
        for inherited in self._inherited:
            inherited.sock.close()

    def prepare_privilege_drop(self, uid: int, gid: int) -> None:
        """Let handlers hand over what they made as root (a directory's owner)."""
        for listener in self.listeners:
            listener.handler.before_privilege_drop(uid, gid)

    def after_privilege_drop(self, uid: int) -> None:
        """Let handlers check what they need as the new user, and warn when the config
        can no longer be read (every later reload would fail).

        Raises:
            AccessError: a handler cannot work as the new user (a directory it cannot
                write), naming the listener.
        """
        for listener in self.listeners:
            try:
                listener.handler.after_privilege_drop()
            except PortdError as exc:
                raise exc.concerning(listener.config.label) from None
        if not os.access(self.config.source, os.R_OK):
            self.log.warning(
                "config_unreadable", path=self.config.source, uid=uid,
                error="the user portd runs as cannot read the config: every reload will fail",
            )  # fmt: skip

    def close(self) -> None:
        """Close every listener's sockets and handlers (idempotent)."""
        for listener in (*self.listeners, *self.retiring):
            listener.close()

    async def start(self) -> None:
        """Serve every bound listener on the running loop (after bind_all)."""
        asyncio.get_running_loop().set_exception_handler(self.on_loop_error)
        for listener in self.listeners:
            await listener.start()
        if self.shared is None:
            self.log.info("daemon_ready", listeners=len(self.listeners))
        else:  # one of several: the parent says daemon_ready once every worker serves
            self.log.info("worker_ready", listeners=len(self.listeners), pid=os.getpid())

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

    def metrics_snapshot(self) -> dict[str, Any]:
        """What /metrics shows: every listener once, its counters including those of its
        ended predecessors (so they only grow), and this process's numbers."""
        from portd.metrics.process import process_numbers

        snapshot = self.snapshot()
        entries = [*snapshot["listeners"], *snapshot["retiring"], *self.retired.values()]
        groups = group_by_name(entries)
        snapshot["listeners"] = [add_stats(parts) for parts in groups.values()]
        snapshot["retiring"] = []
        snapshot["process"] = process_numbers()
        return snapshot

    def status(self) -> str:
        """A one-line summary for systemctl status."""
        parts = [
            f"{x.config.name} {x.config.protocol} {x.addresses[0]}" for x in self.listeners[:8]
        ]
        more = f" and {len(self.listeners) - 8} more" if len(self.listeners) > 8 else ""
        return f"serving {len(self.listeners)} listeners: " + ", ".join(parts) + more

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
            None when the new config is in force, else why not (for ``portd reload``: its
            exit code and ``portd check``'s lines).
        """
        async with self._reload_lock:
            prepared = await self.prepare()
            if isinstance(prepared, ReloadFailure):
                return prepared
            await self.commit(prepared)
            return None

    async def prepare(self) -> PreparedReload | ReloadFailure:
        """Read the config file again and build what it needs: handlers, sockets (the
        ones it keeps taken over, new ones bound), listeners; nothing serves yet.

        Returns:
            The new config ready to :meth:`commit` (or :meth:`abandon`), or why not;
            on failure the old config is untouched.
        """
        self.log.info("reload_started", config=self.config.source)
        try:
            # Off the loop: reading the file, resolving names and importing handlers block.
            config = await anyio.to_thread.run_sync(load_config, self.config.source)
            config = replace(config, daemon=replace(config.daemon, **self.overrides))
            plan = plan_reload(self.listeners, config.listeners)
            started = self._assemble(
                [start.config for start in plan.started],
                {start.config.name: start.plan for start in plan.started},
                previous={s.config.name: s.previous for s in plan.started if s.previous},
            )
        except Exception as exc:  # noqa: BLE001 - whatever fails, the old config keeps serving
            return self._reload_failed(exc)
        return PreparedReload(config, plan, started)

    def abandon(self, prepared: PreparedReload, why: Exception) -> ReloadFailure:
        """Drop a prepared reload: close what it bound and built (never a socket it took
        over, which still serves the old config); the old config stays in force."""
        handed_over = prepared.plan.handed_over
        for listener in prepared.started:
            listener.sockets = [sock for sock in listener.sockets if sock not in handed_over]
            listener.close()
        return self._reload_failed(why)

    def _reload_failed(self, exc: Exception) -> ReloadFailure:
        if isinstance(exc, PortdError):
            lines = tuple(exc.messages())
            self.log.error("reload_failed", error="; ".join(lines), kept=len(self.listeners))
            return ReloadFailure(exc.exit_code, lines)
        reason = f"{type(exc).__name__}: {exc}"  # a portd bug: with its traceback; serve on
        self.log.error("reload_failed", error=reason, kept=len(self.listeners), exc_info=exc)
        return ReloadFailure(EX_SOFTWARE, (f"reload failed: {reason}",))

    async def commit(self, prepared: PreparedReload, *, serve: bool = True) -> None:
        """Put a prepared reload in force: retire what it replaces, start what it made
        (unless ``serve`` is false: the parent of workers only holds the sockets)."""
        config, plan, started = prepared
        handed_over = plan.handed_over
        replaced = {start.previous.config.name for start in plan.started if start.previous}
        for listener in plan.retired:
            listener.stop_accepting(keep=handed_over)
            self.retiring.append(listener)
            if self.spawn is not None:  # in-process callers without a daemon close at close()
                self.spawn(partial(self._retire, listener, listener.name in replaced))
        for listener, new_config in plan.updated:  # toxics and such, applied in place
            listener.handler.update(new_config.settings)
            listener.config = new_config
        by_name = {listener.config.name: listener for listener in [*plan.kept, *started]}
        for listener in started if serve else ():
            await listener.start()
        self._warn_restart_only(self.config.daemon, config.daemon)
        self.config = config
        self.listeners = [by_name[c.name] for c in config.listeners]
        self.log.info(
            "reload_complete",
            unchanged=len(plan.kept) - len(plan.updated),
            updated=len(plan.updated),
            changed=len(replaced),
            added=len(started) - len(replaced),
            removed=len(plan.retired) - len(replaced),
            sockets_handed_over=len(handed_over),
            sockets_bound=sum(len(s.plan.missing) for s in plan.started),
        )

    async def _retire(self, listener: Listener, replaced: bool) -> None:
        """Let a retired listener's connections finish, for shutdown_timeout_s at most."""
        with anyio.move_on_after(self.config.daemon.shutdown_timeout_s):
            await listener.wait_idle()
        aborted = listener.abort_connections()
        for _ in range(3):
            await asyncio.sleep(0)
        listener.close()
        self.retiring.remove(listener)
        fold_into(self.retired, listener.stats())
        event = "listener_replaced" if replaced else "listener_stopped"
        self.log.info(event, listener=listener.config.name, aborted=aborted)

    def _warn_restart_only(self, old: DaemonConfig, new: DaemonConfig) -> None:
        changed = [key for key in RESTART_ONLY_SETTINGS if getattr(old, key) != getattr(new, key)]
        if changed:
            self.log.warning("reload_needs_restart", settings=changed)

    def on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: a callback's error, logged as ``loop_error``."""
        self.log.error(
            "loop_error", message=context.get("message"), exc_info=context.get("exception")
        )
