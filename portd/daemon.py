"""The process around the supervisor: the loop, signals, sd_notify, the watchdog, the
control socket and the privilege drop.

Order: bind everything (as root if started so), start the loop, open the control
socket, drop privileges, serve; SIGHUP reloads, SIGTERM/SIGINT drains and a second one
cuts the drain short (exit 128 + N).

SIGHUP's default action ends the process, and the loop's signal receiver exists only
once every listener is bound: a reload asked for in between (``systemctl reload`` right
after a start, a log rotation script) would kill the daemon. From the moment
``portd serve`` starts, such a SIGHUP is held and applied once the daemon serves.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from portd.errors import ConfigError, PortdError

if TYPE_CHECKING:
    from portd.config import Config
    from portd.control import ReloadFailure
    from portd.metrics.server import MetricsServer
    from portd.privileges import Identity
    from portd.supervisor import Supervisor
    from portd.systemd import InheritedSocket
    from portd.toxiproxy import ToxiproxyApi


class ServiceManager(Protocol):
    """Who hears of the daemon's state: systemd (portd.systemd.Notifier), or a worker's
    parent (portd.workers.child.ParentLink)."""

    watchdog_interval_s: float | None

    def ready(self, status: str) -> None:
        """Every listener serves."""

    def reloading(self) -> None:
        """A reload started."""

    def stopping(self) -> None:
        """The drain started."""

    def watchdog(self) -> None:
        """The loop is alive."""


class WorkerLink(Protocol):
    """How a worker process reports to its parent (portd.workers.child)."""

    async def serving(self, supervisor: Supervisor) -> None:
        """Every listener serves: answer the parent's questions from now on."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)
_held_reloads = 0


def hold_early_reloads() -> None:
    """Count SIGHUPs instead of dying of them until the daemon's receiver takes over."""
    signal.signal(signal.SIGHUP, _hold)


def _hold(signum: int, frame: FrameType | None) -> None:
    global _held_reloads  # noqa: PLW0603 - a signal handler's only way to report
    _held_reloads += 1


def take_held_reloads() -> int:
    """How many SIGHUPs arrived before the daemon listened for them (and forget them)."""
    global _held_reloads
    held, _held_reloads = _held_reloads, 0
    return held


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
        ConfigError: --activation-only without a socket for every listener; --workers
            above 1 with [daemon] toxiproxy_api.
        PortdError: the event loop asked for is not installed, or dropping privileges failed.
    """
    from portd.config.daemon import api_workers_problem, worker_count

    problem = api_workers_problem(config.daemon.workers, config.daemon.toxiproxy_api)
    if problem:  # --workers over a config with toxiproxy_api (check refuses the file's own)
        raise ConfigError([f"--workers {config.daemon.workers}: {problem}"])
    if worker_count(config.daemon.workers) > 1:
        from portd.workers.parent import run_workers

        return run_workers(
            config, inherited=inherited, activation_only=activation_only, identity=identity,
            overrides=overrides,
        )  # fmt: skip
    from portd.supervisor import Supervisor
    from portd.systemd import Notifier

    supervisor = Supervisor(
        config, inherited=inherited, activation_only=activation_only, overrides=overrides
    )
    supervisor.bind_all()
    try:
        metrics = bind_metrics_for(config)
        return run_loop(config.daemon.loop, Daemon(supervisor, Notifier(), identity, metrics))
    finally:
        supervisor.close()


def bind_metrics_for(config: Config) -> list[socket.socket]:
    """The ``[daemon] metrics`` sockets, bound now (as root, with the listeners), or none.

    Raises:
        BindError: as for a listener.
    """
    if not config.daemon.metrics:
        return []
    from portd.metrics.server import bind_metrics

    return bind_metrics(config.daemon.metrics)


def run_loop(choice: str, daemon: Any) -> int:
    """Run ``daemon.run`` on the event loop ``choice`` names, as anyio's asyncio backend.

    Raises:
        PortdError: the one an expected failure raised inside the loop's task groups.
    """
    import anyio

    try:
        code: int = anyio.run(daemon.run, backend="asyncio", backend_options=loop_options(choice))
        return code
    except BaseExceptionGroup as group:  # a task group wrapped an expected failure
        expected = group.subgroup(PortdError)
        if expected is None or expected.split(PortdError)[1] is not None:
            raise
        raise _first_leaf(expected) from None


class Daemon:
    """One serving process: a supervisor plus everything the process owes its manager."""

    def __init__(
        self,
        supervisor: Supervisor,
        notifier: ServiceManager,
        identity: Identity | None,
        metrics_sockets: Sequence[socket.socket] = (),
        worker: WorkerLink | None = None,
    ) -> None:
        """``metrics_sockets``: where /metrics is served (owned from now on); ``worker``:
        this process serves as one of a daemon's workers, which answers its parent
        instead of a control socket, and stops on SIGTERM only (the parent reloads)."""
        self.supervisor = supervisor
        self.notifier = notifier
        self.identity = identity
        self.metrics_sockets = list(metrics_sockets)
        self.worker = worker
        self.log = supervisor.log
        self.api: ToxiproxyApi | None = None  # [daemon] toxiproxy_api, once serving

    async def run(self) -> int:
        """Serve until a stop signal, reloading on SIGHUP, then drain.

        Returns:
            The exit code: 0 after a drain, 128+signal when a second signal cut it short.
        """
        from portd.control import open_control

        supervisor = self.supervisor
        control = None
        if self.worker is None:
            control = await open_control(
                supervisor.config.daemon.control_socket, supervisor.config.source,
                self.snapshot, self.reload, self.log,
            )  # fmt: skip
        try:
            # imported as root: after the privilege drop, ctypes may be unreadable
            from portd.memory import hold_heap_steady

            hold_heap_steady()
            self.drop_privileges()
            return await self._serve(control.path if control is not None else "")
        finally:
            if control is not None:
                control.close()

    def snapshot(self) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """What ``portd status`` shows (the control socket asks)."""
        return self.supervisor.snapshot()

    async def metrics_snapshot(self) -> dict[str, Any]:
        """What /metrics shows."""
        return self.supervisor.metrics_snapshot()

    def drop_privileges(self) -> None:
        """Switch to [daemon] user/group, after handlers hand over what they made as root.

        Called inside the running loop, before any listener accepts: by then every module
        serving needs is imported, as root, whatever the target user may read.

        Raises:
            PrivilegeError: not root, or root could be regained.
        """
        if self.identity is None:
            return
        from portd.privileges import drop_privileges

        self.supervisor.prepare_privilege_drop(self.identity.uid, self.identity.gid)
        drop_privileges(self.identity)
        self.log.info("privileges_dropped", uid=self.identity.uid, gid=self.identity.gid)
        self.supervisor.after_privilege_drop(self.identity.uid)

    async def _serve(self, control_path: str) -> int:
        import anyio

        supervisor = self.supervisor
        handled = HANDLED_SIGNALS if self.worker is None else (signal.SIGTERM,)
        with anyio.open_signal_receiver(*handled) as signals:
            async with anyio.create_task_group() as group:
                supervisor.spawn = group.start_soon
                await self._start_toxiproxy_api()  # before daemon_ready, which promises it
                await supervisor.start()
                metrics = self._serve_metrics()
                if self.worker is not None:
                    await self.worker.serving(supervisor)
                freeze_start_up_objects()
                self.notifier.ready(supervisor.status())
                if take_held_reloads():  # asked for while binding: the receiver was not there
                    await self.reload()
                if control_path:
                    self.log.info("control_socket_ready", path=control_path)
                if self.notifier.watchdog_interval_s:
                    group.start_soon(self._keep_watchdog_fed, self.notifier.watchdog_interval_s)
                from portd.memory import keep_memory_returned  # loaded by run()

                group.start_soon(keep_memory_returned, self.log)
                received = await self._serve_until_stop(signals)
                if metrics is not None:
                    metrics.close()
                exit_code = await self._shut_down(signals, received)
                group.cancel_scope.cancel()
            return exit_code

    def _serve_metrics(self) -> MetricsServer | None:
        if not self.metrics_sockets:
            return None
        from portd.metrics.server import MetricsServer, announce

        server = MetricsServer(self.metrics_sockets, self.metrics_snapshot, self.log)
        server.start()
        announce(self.supervisor.config.daemon.metrics, self.metrics_sockets, self.log)
        return server

    async def _start_toxiproxy_api(self) -> None:
        """``[daemon] toxiproxy_api``: serve toxiproxy's HTTP API beside the listeners."""
        daemon = self.supervisor.config.daemon
        if not daemon.toxiproxy_api:
            return
        from portd.toxiproxy import start_api

        self.api = await start_api(
            daemon.toxiproxy_api,
            allow_remote=daemon.toxiproxy_api_remote,
            next_conn_id=self.supervisor.next_conn_id,
            configured=lambda: self.supervisor.listeners,
        )
        self.log.info("toxiproxy_api_ready", address=self.api.address)

    async def reload(self) -> ReloadFailure | None:
        """Reload the config, telling the service manager; None or why it failed."""
        self.notifier.reloading()
        reason = await self.supervisor.reload()
        self.notifier.ready(self.supervisor.status())
        return reason

    async def _serve_until_stop(self, signals: AsyncIterator[signal.Signals]) -> signal.Signals:
        async for received in signals:
            if received in STOP_SIGNALS:
                return received
            await self.reload()
        raise AssertionError("signal receiver ended")  # pragma: no cover

    async def _shut_down(
        self, signals: AsyncIterator[signal.Signals], received: signal.Signals
    ) -> int:
        import anyio

        supervisor = self.supervisor
        supervisor.stop_accepting()
        self.notifier.stopping()  # after: a worker's parent reads it as "accepts no more"
        if self.api is not None:
            self.api.stop_accepting()
        everyone = [*supervisor.listeners, *supervisor.retiring]
        timeout_s = supervisor.config.daemon.shutdown_timeout_s
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
            await supervisor.drain(timeout_s)
            group.cancel_scope.cancel()
        if self.api is not None:
            self.api.close()
        aborted = await supervisor.abort_connections()
        self.log.info("shutdown_complete", aborted=aborted, exit_code=exit_code)
        return exit_code

    async def _keep_watchdog_fed(self, interval_s: float) -> None:
        import anyio

        while True:  # runs on the loop: it pings only while the loop is responsive
            self.notifier.watchdog()
            await anyio.sleep(interval_s)


YOUNG_COLLECTION_THRESHOLD = 5000  # CPython's default is 700


def freeze_start_up_objects() -> None:
    """Keep what start-up made (modules, config, handlers) out of the collector's passes,
    and let it run less often.

    Those objects live as long as the daemon; without this, every full collection walks
    them all again while every connection waits (milliseconds, the p99 of short
    connections). Connections are freed by refcounting and never need the collector,
    but a burst of accepts outruns the loop's frees of closed transports, and at the
    default threshold the young generation was collected every ~40 short connections
    (5.6 us of each, under wrk -c64 with Connection: close); at 5,000, a few times a run.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    gc.enable()  # paused through start-up by portd serve


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
            from portd.errors import LoopUnavailableError

            raise LoopUnavailableError(
                '[daemon] loop = "uvloop" but uvloop is not installed; pip install uvloop, '
                'or loop = "auto"'
            ) from None
        return {}
    return {"loop_factory": uvloop.new_event_loop}
