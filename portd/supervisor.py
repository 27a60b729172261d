"""Lifecycle: bind every listener (all or nothing), serve, and drain on SIGTERM/SIGINT.

Binding happens before the event loop starts, so a config that cannot be served fails
fast with its exit code and leaves no socket open. Signals are handled with anyio; the
data path itself is asyncio protocols (see connections.py).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator
from typing import Any

import anyio

from portd.config import Config
from portd.errors import PortdError
from portd.listeners import Listener
from portd.logging import get_logger
from portd.sockets import open_listener_sockets

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)


class Supervisor:
    """Owns every listener of one config for the life of the daemon."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.listeners: list[Listener] = []
        self.log: Any = get_logger()
        self._conn_ids = itertools.count(1)

    def bind_all(self) -> None:
        """Open every listener's sockets; if any fails, close all and raise.

        Raises:
            BindError: the first listener that could not be bound, naming it.
            PortdError: a handler could not start (its message names why).
        """
        opened: list[Listener] = []
        next_conn_id = self._conn_ids.__next__
        try:
            for config in self.config.listeners:
                sockets = open_listener_sockets(
                    config.addresses,
                    config.protocol,
                    config.label,
                    config.backlog,
                    skip_missing_ipv6=config.bind.is_wildcard,
                )
                try:
                    opened.append(Listener(config, sockets, next_conn_id))
                except BaseException:  # the handler could not start: its sockets go too
                    for sock in sockets:
                        sock.close()
                    raise
        except BaseException:
            for listener in opened:
                listener.close()
            raise
        self.listeners = opened

    def close(self) -> None:
        """Close every listener's sockets and handlers (idempotent)."""
        for listener in self.listeners:
            listener.close()

    async def run(self) -> int:
        """Serve until a stop signal, then drain.

        Returns:
            The exit code: 0 after a drain, 128+signal when a second signal cut it short.
        """
        with anyio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
            await self.start()
            received = await self._wait_for_stop(signals)
            self.stop_accepting()
            live = sum(listener.live for listener in self.listeners)
            timeout_s = self.config.daemon.shutdown_timeout_s
            self.log.info(
                "shutdown_started", signal=received.name, connections=live, timeout_s=timeout_s
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

    async def start(self) -> None:
        """Serve every bound listener on the running loop (after bind_all)."""
        asyncio.get_running_loop().set_exception_handler(self._on_loop_error)
        for listener in self.listeners:
            await listener.start()
        self.log.info("daemon_ready", listeners=len(self.listeners))

    def stop_accepting(self) -> None:
        """Stop accepting on every listener (idempotent); live connections go on."""
        for listener in self.listeners:
            listener.stop_accepting()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting everywhere, then wait up to ``timeout_s`` for connections to end."""
        self.stop_accepting()
        with anyio.move_on_after(timeout_s):
            for listener in self.listeners:
                await listener.wait_idle()

    async def abort_connections(self) -> int:
        """Close every live connection now and let their closing lines be written.

        Returns:
            How many connections were still open.
        """
        aborted = sum(listener.abort_connections() for listener in self.listeners)
        for _ in range(3):  # connection_lost runs on the next loop iterations
            await asyncio.sleep(0)
        return aborted

    async def _wait_for_stop(self, signals: AsyncIterator[signal.Signals]) -> signal.Signals:
        async for received in signals:
            if received in STOP_SIGNALS:
                return received
            self.log.warning("reload_not_supported", signal=received.name)
        raise AssertionError("signal receiver ended")  # pragma: no cover

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.log.error(
            "loop_error", message=context.get("message"), exc_info=context.get("exception")
        )


def run_daemon(config: Config) -> int:
    """Bind, serve until stopped, and return the exit code.

    Raises:
        BindError: a listener could not be bound (nothing stays open).
        PortdError: the event loop asked for is not installed.
    """
    supervisor = Supervisor(config)
    supervisor.bind_all()
    try:
        return anyio.run(
            supervisor.run, backend="asyncio", backend_options=loop_options(config.daemon.loop)
        )
    finally:
        supervisor.close()


def loop_options(choice: str) -> dict[str, Any]:
    """anyio backend options for ``auto``, ``uvloop`` or ``asyncio``.

    Raises:
        PortdError: ``uvloop`` was asked for and is not installed.
    """
    if choice == "asyncio":
        return {}
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise PortdError('loop = "uvloop" but uvloop is not installed') from None
        return {}
    return {"loop_factory": uvloop.new_event_loop}
