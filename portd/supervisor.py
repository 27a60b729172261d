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
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import anyio

from portd.assembly import assemble, plan_taken
from portd.config import Config, DaemonConfig, load_config
from portd.control import ReloadFailure
from portd.errors import EX_SOFTWARE, ConfigError, PortdError
from portd.listeners import Listener
from portd.logging import get_logger
from portd.reload import ReloadPlan, plan_reload
from portd.systemd import InheritedSocket, match_inherited

RESTART_ONLY_SETTINGS = (
    "log_format", "log_level", "loop", "user", "group", "control_socket", "control_socket_abstract",
    "toxiproxy_api", "toxiproxy_api_remote",
)  # fmt: skip
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]


class Supervisor:
    """Owns every listener of one config for the life of the daemon."""

    def __init__(
        self,
        config: Config,
        *,
        inherited: Sequence[InheritedSocket] = (),
        activation_only: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.overrides = overrides or {}  # command-line [daemon] settings that outlive reloads
        self.listeners: list[Listener] = []
        self.retiring: list[Listener] = []
        self.log: Any = get_logger()
        self._inherited = list(inherited)
        self._activation_only = activation_only
        self._conn_ids = itertools.count(1)
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
            self.listeners = assemble(configs, plans, self._conn_ids.__next__)
        except BaseException:
            for sock in taken:
                sock.close()
            raise

    def next_conn_id(self) -> int:
        """The next connection id (listeners made outside the config share the count)."""
        return next(self._conn_ids)

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
        asyncio.get_running_loop().set_exception_handler(self._on_loop_error)
        for listener in self.listeners:
            await listener.start()
        self.log.info("daemon_ready", listeners=len(self.listeners))

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
            return await self._reload()

    async def _reload(self) -> ReloadFailure | None:
        self.log.info("reload_started", config=self.config.source)
        try:
            # Off the loop: reading the file, resolving names and importing handlers block.
            config = await anyio.to_thread.run_sync(load_config, self.config.source)
            config = replace(config, daemon=replace(config.daemon, **self.overrides))
            plan = plan_reload(self.listeners, config.listeners)
            started = assemble(
                [start.config for start in plan.started],
                {start.config.name: start.plan for start in plan.started},
                self._conn_ids.__next__,
                previous={s.config.name: s.previous for s in plan.started if s.previous},
            )
        except Exception as exc:  # noqa: BLE001 - whatever fails, the old config keeps serving
            return self._reload_failed(exc)
        await self._commit(config, plan, started)
        return None

    def _reload_failed(self, exc: Exception) -> ReloadFailure:
        if isinstance(exc, PortdError):
            lines = tuple(exc.messages())
            self.log.error("reload_failed", error="; ".join(lines), kept=len(self.listeners))
            return ReloadFailure(exc.exit_code, lines)
        reason = f"{type(exc).__name__}: {exc}"  # a portd bug: with its traceback; serve on
        self.log.error("reload_failed", error=reason, kept=len(self.listeners), exc_info=exc)
        return ReloadFailure(EX_SOFTWARE, (f"reload failed: {reason}",))

    async def _commit(self, config: Config, plan: ReloadPlan, started: list[Listener]) -> None:
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
        for listener in started:
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
        event = "listener_replaced" if replaced else "listener_stopped"
        self.log.info(event, listener=listener.config.name, aborted=aborted)

    def _warn_restart_only(self, old: DaemonConfig, new: DaemonConfig) -> None:
        changed = [key for key in RESTART_ONLY_SETTINGS if getattr(old, key) != getattr(new, key)]
        if changed:
            self.log.warning("reload_needs_restart", settings=changed)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.log.error(
            "loop_error", message=context.get("message"), exc_info=context.get("exception")
        )
