"""The parent of a daemon's workers (``[daemon] workers`` above 1).

It does what a single-process daemon does before serving (bind every listener, all or
nothing; take systemd's sockets; the control socket; the metrics socket; dropping
privileges) and then, instead of serving, starts one worker per slot on those
sockets and stays small: it serves nothing itself, reads no client byte, and imports
no handler code beyond what checking the config needs.

* READY=1 (and ``daemon_ready``) once every worker serves.
* SIGTERM/SIGINT: every worker drains (``shutdown_timeout_s``); a second signal is
  passed on, and each worker cuts its drain short; exit 0, or 128+N after a second one.
* SIGHUP (or ``portd reload``): the new config is checked and bound as a single
  process would, a new generation of workers starts on it, and once all of them serve
  the old ones drain. Sockets of listeners that stay are never closed, so no client
  is refused; if the new workers fail, they are stopped and the old ones serve on.
* A worker that dies is started again on its slot, after a back-off (portd.workers.pool).
* ``portd status`` and /metrics add up what every worker reports, and what workers that
  exited reported last, so counters only grow.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from portd.config.daemon import worker_count
from portd.control import ReloadFailure
from portd.daemon import (
    HANDLED_SIGNALS,
    STOP_SIGNALS,
    Daemon,
    bind_metrics_for,
    freeze_start_up_objects,
    run_loop,
    take_held_reloads,
)  # fmt: skip
from portd.errors import EX_SOFTWARE, PortdError, WorkerError
from portd.supervisor import Supervisor
from portd.workers.ids import create_id_counter
from portd.workers.numbers import DaemonNumbers
from portd.workers.pool import (
    READY_TIMEOUT_S,
    Backoff,
    Spawner,
    StartFailure,
    Worker,
    failure_code,
    start_error,
    start_worker,
)  # fmt: skip
from portd.workers.sockets import SlotSockets
from portd.workers.spawner import start_spawner
from portd.workers.tally import TallyRegions

if TYPE_CHECKING:
    import socket

    from portd.config import Config
    from portd.listeners import Listener
    from portd.privileges import Identity
    from portd.supervisor import PreparedReload
    from portd.systemd import InheritedSocket, Notifier

STOP_GRACE_S = 5.0  # past shutdown_timeout_s, before a worker that did not exit is killed
SPARE_TALLY_SLOTS = 7  # generations that may drain at once beside the serving one


def run_workers(
    config: Config,
    *,
    inherited: Sequence[InheritedSocket] = (),
    activation_only: bool = False,
    identity: Identity | None = None,
    overrides: dict[str, Any] | None = None,
) -> int:
    """Bind as ``portd serve`` does, then serve through workers until stopped.

    Raises:
        BindError, ConfigError, PortdError: as :func:`portd.daemon.run_daemon`.
    """
    from portd.systemd import Notifier

    supervisor = Supervisor(
        config, inherited=inherited, activation_only=activation_only, overrides=overrides
    )
    supervisor.bind_all()
    count = worker_count(config.daemon.workers)
    slots = SlotSockets(count)
    shared = Shared(count)
    try:
        slots.bind(supervisor.listeners)
        metrics = bind_metrics_for(config)

        def forget() -> None:  # in the spawner: it serves none of these
            for listener in supervisor.listeners:
                listener.close_sockets(released=False)
            for sock in metrics:
                sock.close()
            slots.close()
            shared.close()

        spawner = start_spawner(identity, forget, config)
        parent = WorkersParent(
            supervisor, Notifier(), identity, metrics, slots=slots, shared=shared, spawner=spawner
        )
        return run_loop(config.daemon.loop, parent)
    finally:
        slots.close()
        shared.close()
        supervisor.close()


class Shared:
    """The shared memory of a daemon's workers: connection ids and connection counts."""

    def __init__(self, workers: int) -> None:
        self.ids_fd = create_id_counter()
        self.tallies = TallyRegions(workers * (1 + SPARE_TALLY_SLOTS))
        self.closed = False

    def close(self) -> None:
        """Release both (idempotent; the workers keep their own mappings)."""
        if not self.closed:
            self.closed = True
            os.close(self.ids_fd)
            self.tallies.close()


class WorkersParent(Daemon):
    """The daemon as a parent: the supervisor holds the sockets, workers serve them."""

    def __init__(
        self,
        supervisor: Supervisor,
        notifier: Notifier,
        identity: Identity | None,
        metrics_sockets: Sequence[socket.socket],
        *,
        slots: SlotSockets,
        shared: Shared,
        spawner: tuple[int, socket.socket],
    ) -> None:
        super().__init__(supervisor, notifier, identity, metrics_sockets)
        self.slots = slots
        self.count = slots.slots
        self.ids_fd = shared.ids_fd
        self.tallies = shared.tallies
        self.spawner = Spawner(*spawner, lost=self._spawner_lost)
        self.free_tally_slots = list(range(self.tallies.slots))
        self.generation = 0
        self.current: list[Worker | None] = [None] * self.count
        self.workers: list[Worker] = []  # every live worker, of any generation
        self.backoff = [Backoff() for _ in range(self.count)]
        self.restarts = 0
        self.numbers = DaemonNumbers()
        self.stopping = False
        self._reloading = asyncio.Lock()
        self._group: Any = None

    def _spawner_lost(self) -> None:
        """The spawner died: no worker can start any more, and its workers have been
        told to stop (PR_SET_PDEATHSIG); so does the daemon."""
        if not self.stopping:
            self.log.error("spawner_exited", error="the process that starts workers exited")
            os.kill(os.getpid(), signal.SIGTERM)

    # Serving.

    async def _serve(self, control_path: str) -> int:
        with anyio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
            async with anyio.create_task_group() as group:
                self._group = group
                loop = asyncio.get_running_loop()
                loop.set_exception_handler(self.supervisor.on_loop_error)
                self.spawner.start(loop)
                started = await self._start(self.supervisor.config, self.supervisor.listeners)
                if isinstance(started, StartFailure):
                    self.stopping = True
                    self.log.error("daemon_failed", error=str(started.error))
                    group.cancel_scope.cancel()
                    return started.exit_code
                self.generation, self.current = 1, list(started)
                metrics = self._serve_metrics()
                freeze_start_up_objects()
                self.log.info("daemon_ready", listeners=len(self.supervisor.listeners),
                              workers=self.count, pids=[w.pid for w in self.workers])  # fmt: skip
                self.notifier.ready(self.status_line())
                if take_held_reloads():
                    await self.reload()
                if control_path:
                    self.log.info("control_socket_ready", path=control_path)
                if self.notifier.watchdog_interval_s:
                    group.start_soon(self._keep_watchdog_fed, self.notifier.watchdog_interval_s)
                received = await self._serve_until_stop(signals)
                if metrics is not None:
                    metrics.close()
                exit_code = await self._shut_down(signals, received)
                group.cancel_scope.cancel()
            return exit_code

    def status_line(self) -> str:
        """The one-line summary for systemctl status."""
        return f"{self.supervisor.status()}; {self.count} workers"

    async def _start(
        self, config: Config, listeners: Sequence[Listener]
    ) -> list[Worker] | StartFailure:
        """A worker per slot on ``listeners``: all of them once they serve, or why not
        (then the others are stopped: none serve this config)."""
        generation = self.generation + 1
        started: list[Worker] = []
        failure: StartFailure | None = None
        try:
            for slot in range(self.count):
                started.append(await self._spawn(slot, generation, config, listeners))
        except (OSError, TimeoutError, WorkerError) as exc:
            error = (
                exc
                if isinstance(exc, WorkerError)
                else WorkerError(f"cannot start a worker: {exc}")
            )
            failure = StartFailure(error, EX_SOFTWARE)
        else:
            with anyio.move_on_after(READY_TIMEOUT_S):
                if all([await worker.ready for worker in started]):
                    return started
        for worker in started:
            worker.signal(signal.SIGKILL)
        for worker in started:
            await worker.exited.wait()
        failed = [w for w in started if w.exit_code not in (None, -signal.SIGKILL)]
        if failure is None and failed:
            failure = StartFailure(start_error(failed[0]), failure_code(failed[0]))
        return failure or StartFailure(
            WorkerError(f"the workers did not serve within {READY_TIMEOUT_S:g} s"), EX_SOFTWARE
        )

    async def _spawn(
        self, slot: int, generation: int, config: Config, listeners: Sequence[Listener]
    ) -> Worker:
        """Start the worker of ``slot`` on ``listeners`` (as they are in ``config``).

        Raises:
            OSError, TimeoutError: the spawner is gone or did not answer; WorkerError: no
                counting slot is free.
        """
        if not self.free_tally_slots:
            raise WorkerError(
                f"{len(self.workers)} workers run already (older ones still draining); "
                "wait for them to finish, then reload again"
            )
        worker = Worker(slot, generation, self.free_tally_slots.pop(0), self._exited)
        pairs = self.slots.for_slot(listeners, slot)
        directories = _held_directories()
        # Passed by position after the channel (0): the shared memory, the directories,
        # then each socket once.
        fds = [self.ids_fd, self.tallies.fd, *directories]
        place: dict[int, int] = {}
        for _, sock in pairs:
            if sock.fileno() not in place:
                fds.append(sock.fileno())
                place[sock.fileno()] = len(fds)
        boot = {
            "worker": slot, "generation": generation, "parent": os.getpid(),
            "config": config.text, "source": config.source,
            "overrides": self.supervisor.overrides,
            "sockets": [[name, place[sock.fileno()]] for name, sock in pairs],
            "ids": 1, "tally": 2, "directories": list(range(3, 3 + len(directories))),
            "tally_slots": self.tallies.slots, "tally_slot": worker.tally_slot,
            "regions": {x.name: list(self.tallies.region_for(x.config)) for x in listeners},
        }  # fmt: skip
        try:
            await start_worker(worker, self.spawner, boot, fds)
        except BaseException:
            self.free_tally_slots.append(worker.tally_slot)
            raise
        self.workers.append(worker)
        self.log.info("worker_started", worker=slot, pid=worker.pid, generation=generation)
        return worker

    def _exited(self, worker: Worker) -> None:
        self.workers.remove(worker)
        self.tallies.clear_slot(worker.tally_slot)
        self.free_tally_slots.append(worker.tally_slot)
        self.numbers.worker_exited(worker)
        how = worker.describe_exit()
        if self.current[worker.slot] is not worker or self.stopping:
            never_served = worker.final is None and worker.exit_code not in (0, -signal.SIGKILL)
            event = "worker_failed" if never_served and not self.stopping else "worker_stopped"
            log = self.log.error if event == "worker_failed" else self.log.info
            log(event, worker=worker.slot, pid=worker.pid, **how)
            return
        self.current[worker.slot] = None
        lived_s = time.monotonic() - worker.started
        delay_s = self.backoff[worker.slot].next_delay(lived_s)
        self.log.error("worker_exited", worker=worker.slot, pid=worker.pid, **how,
                       restart_in_s=delay_s)  # fmt: skip
        self._group.start_soon(self._restart, worker.slot, delay_s)

    async def _restart(self, slot: int, delay_s: float) -> None:
        await anyio.sleep(delay_s)  # the back-off (portd.workers.pool.Backoff)
        if self.stopping or self.current[slot] is not None:
            return
        supervisor = self.supervisor
        try:
            self.current[slot] = await self._spawn(slot, self.generation, supervisor.config,
                                                   supervisor.listeners)  # fmt: skip
        except (OSError, TimeoutError, PortdError) as exc:
            self.log.error("worker_failed", worker=slot, error=str(exc))
            self._group.start_soon(self._restart, slot, self.backoff[slot].next_delay(0.0))
            return
        self.restarts += 1

    # Reloading.

    async def reload(self) -> ReloadFailure | None:
        """Start workers on the config file as it is now; once they serve, drain the
        old ones. None, or why the old config serves on."""
        async with self._reloading:
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                self.notifier.ready(self.status_line())

    async def _reload(self) -> ReloadFailure | None:
        supervisor = self.supervisor
        prepared = await supervisor.prepare()
        if isinstance(prepared, ReloadFailure):
            return prepared
        if prepared.config == supervisor.config:  # the same file: the workers serve it already
            await supervisor.commit(prepared, serve=False)
            return None
        listeners = _in_order(prepared)
        try:
            self.slots.bind(prepared.started)
        except PortdError as exc:
            return supervisor.abandon(prepared, exc)
        started = await self._start(prepared.config, listeners)
        if isinstance(started, StartFailure):
            self.slots.keep_only(supervisor.listeners)
            return supervisor.abandon(prepared, started.error)
        old = [worker for worker in self.workers if worker.generation == self.generation]
        self.generation, self.current = self.generation + 1, list(started)
        # Retired listeners are logged as stopped (or replaced) once the old workers,
        # which still serve their connections, have exited.
        supervisor.spawn = partial(self._after, old)
        for worker in old:
            worker.signal(signal.SIGTERM)
        # reload_complete (in commit) means what it does in one process: connections
        # from now on meet the new config, none an old worker still accepting.
        with anyio.move_on_after(STOP_GRACE_S):
            for worker in old:
                await worker.not_accepting.wait()
        await supervisor.commit(prepared, serve=False)
        self.slots.keep_only(supervisor.listeners)
        return None

    def _after(self, workers: list[Worker], job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async def when_exited() -> None:
            for worker in workers:
                await worker.exited.wait()
            await job()

        self._group.start_soon(when_exited)

    # What status and /metrics show.

    async def snapshot(self) -> dict[str, Any]:
        """The workers' numbers added up, for ``portd status``."""
        replies = await self.numbers.ask(self.workers, "status")
        return self.numbers.add_up(self.supervisor, replies, self.workers, self.restarts, False)

    async def metrics_snapshot(self) -> dict[str, Any]:
        """The workers' numbers added up, with the processes', for /metrics."""
        replies = await self.numbers.ask(self.workers, "metrics")
        return self.numbers.add_up(self.supervisor, replies, self.workers, self.restarts, True)

    # Stopping.

    async def _shut_down(
        self, signals: AsyncIterator[signal.Signals], received: signal.Signals
    ) -> int:
        self.stopping = True
        self.notifier.stopping()
        # The workers stop accepting at once; so does the parent, whose copies of the
        # listening sockets would otherwise keep new clients waiting in the backlog.
        self.supervisor.stop_accepting()
        self.slots.close()
        timeout_s = self.supervisor.config.daemon.shutdown_timeout_s
        self.log.info("shutdown_started", signal=received.name, workers=len(self.workers),
                      timeout_s=timeout_s)  # fmt: skip
        for worker in list(self.workers):
            worker.signal(signal.SIGTERM)
        exit_code = 0
        async with anyio.create_task_group() as group:

            async def cut_short_on_second_signal() -> None:
                nonlocal exit_code
                async for again in signals:
                    if again in STOP_SIGNALS:
                        exit_code = 128 + again
                        for worker in list(self.workers):
                            group.start_soon(worker.cut_short)

            group.start_soon(cut_short_on_second_signal)
            with anyio.move_on_after(timeout_s + STOP_GRACE_S):
                for worker in list(self.workers):
                    await worker.exited.wait()
            group.cancel_scope.cancel()
        killed = await self._kill_the_rest()
        self.log.info("shutdown_complete", exit_code=exit_code, killed=killed)
        return exit_code

    async def _kill_the_rest(self) -> int:
        left = list(self.workers)
        for worker in left:
            worker.signal(signal.SIGKILL)
        for worker in left:
            await worker.exited.wait()
        return len(left)


def _in_order(prepared: PreparedReload) -> list[Listener]:
    """The listeners of a prepared reload (kept and started) in the config's order."""
    by_name = {x.name: x for x in [*prepared.plan.kept, *prepared.started]}
    return [by_name[c.name] for c in prepared.config.listeners]


def _held_directories() -> list[int]:
    if "portd.handlers.files.directory" not in sys.modules:
        return []  # no file-receive listener was ever built: nothing is held
    from portd.handlers.files.directory import held_descriptors

    return held_descriptors()
