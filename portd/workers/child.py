"""A worker process, forked by the spawner (portd.workers.spawner) for its parent.

It gets descriptors, the first its channel to the parent (portd.workers.channel), whose
first message, the bootstrap, says what the others are and everything the worker
serves with: the config text its parent checked (never the file again, which may have
changed since), the listeners' sockets, the shared connection ids and counts, the
receive directories the parent holds locked. The worker then serves exactly as a
single-process daemon does (portd.daemon), with three differences: it answers its
parent instead of a control socket, SIGTERM is its only signal (the parent reloads by
starting new workers), and it reports ``ready`` and its final numbers on the channel.

It runs in the spawner's process group, so Ctrl-C in a terminal reaches the parent
only, which passes the stop on; if the spawner dies (it does when the parent dies),
the kernel sends the worker SIGTERM (PR_SET_PDEATHSIG), so no worker outlives its
daemon.
"""

from __future__ import annotations

import signal
import socket
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from portd.workers.channel import LineProtocol, Message, encode, read_first

if TYPE_CHECKING:
    from portd.config import Config, ListenerConfig
    from portd.limits import Tally
    from portd.supervisor import Supervisor

PR_SET_PDEATHSIG = 1
# The config the parent loaded before it dropped privileges, set in the spawner: a
# worker of the first generation (also one started again in a dead one's place) serves
# it as loaded, without reading its files again as the new user (a TLS key only root
# may read). Workers of a reload read their files, as the parent did for that reload
# (as the new user): a renewed certificate under an unchanged config text is new.
START_CONFIG: Config | None = None


def run_worker(fds: list[int]) -> int:
    """Serve as a worker until SIGTERM; the exit code is the daemon's (0 after a drain).

    ``fds``: the channel, then what the bootstrap names by position.
    """
    channel = socket.socket(fileno=fds[0])
    boot, pending = read_first(channel)
    _die_with_parent(int(boot["parent"]))
    from portd.errors import PortdError

    try:
        return _serve(boot, channel, pending, fds)
    except PortdError as exc:  # the parent checked all this; say what differed here
        for line in exc.messages():
            print(f"portd: worker {boot['worker']}: {line}", file=sys.stderr)
        return exc.exit_code


def _serve(boot: Message, channel: socket.socket, pending: bytes, fds: list[int]) -> int:
    from portd.config import parse_config_text
    from portd.daemon import Daemon, run_loop
    from portd.logging import configure_logging
    from portd.supervisor import Supervisor

    start = START_CONFIG
    first = boot["generation"] == 1
    if (
        first
        and start is not None
        and (start.text, start.source) == (boot["config"], boot["source"])
    ):
        config = start
    else:
        config = parse_config_text(boot["config"], boot["source"])
    config = replace(config, daemon=replace(config.daemon, **boot["overrides"]))
    daemon_config = config.daemon
    configure_logging(daemon_config.log_format, daemon_config.log_level,
                      fields={"worker": boot["worker"]})  # fmt: skip
    if boot["directories"]:
        from portd.handlers.files.directory import adopt_descriptors

        adopt_descriptors([fds[index] for index in boot["directories"]])
    given: dict[str, list[socket.socket]] = {}
    for name, index in boot["sockets"]:
        sock = socket.socket(fileno=fds[index])
        sock.setblocking(False)
        given.setdefault(name, []).append(sock)
    link = ParentLink(boot, channel, pending)
    shared = WorkerShared(boot, fds)
    supervisor = Supervisor(config, overrides=boot["overrides"], shared=shared, given=given)
    try:
        supervisor.bind_all()
        return run_loop(daemon_config.loop, Daemon(supervisor, link, None, worker=link))
    finally:
        # The loop gave SIGTERM its default action back: a late one (a stop passed on
        # twice) must not cut the final report short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        link.send_final(supervisor)
        supervisor.close()


def _die_with_parent(daemon: int) -> None:
    """SIGTERM when the spawner dies, as it does when the daemon's parent dies (one
    killed with SIGKILL cannot pass a stop on)."""
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's process group ends us
        return
    if os.getppid() == 1 or not _alive(daemon):  # gone before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerShared:
    """What this worker shares with the daemon's others: connection ids and counts."""

    def __init__(self, boot: Message, fds: list[int]) -> None:
        from portd.workers.ids import SharedIds
        from portd.workers.tally import Region, map_regions

        self._ids = SharedIds(fds[boot["ids"]])
        self.next_conn_id = self._ids.next_conn_id
        self._words = map_regions(fds[boot["tally"]])
        self._regions = {name: Region(*region) for name, region in boot["regions"].items()}
        self._slots = int(boot["tally_slots"])
        self._slot = int(boot["tally_slot"])

    def tally(self, config: ListenerConfig) -> Tally | None:
        """The listener's counts for the whole daemon (None: a listener of its own)."""
        from portd.workers.tally import SharedTally

        region = self._regions.get(config.name)
        if region is None:
            return None
        return SharedTally(self._words, region, self._slots, self._slot)


class ParentLink:
    """The channel as this worker's service manager: ``ready``, ``stopping``, answers."""

    watchdog_interval_s: float | None = None  # the parent keeps systemd's watchdog fed

    def __init__(self, boot: Message, channel: socket.socket, pending: bytes) -> None:
        self.worker = boot["worker"]
        self.channel = channel
        self.pending = pending
        self.protocol: LineProtocol | None = None
        self.supervisor: Supervisor | None = None
        self.stopped = False

    async def serving(self, supervisor: Supervisor) -> None:
        """Every listener serves: answer the parent from now on."""
        import asyncio

        self.supervisor = supervisor
        protocol = self.protocol = LineProtocol(self._asked, self._parent_gone, self.pending)
        loop = asyncio.get_running_loop()
        # A duplicate, so the final report can still be written once the loop has closed
        # the transport's socket.
        await loop.create_unix_connection(lambda: protocol, sock=self.channel.dup())

    def _asked(self, message: Message) -> None:
        assert self.supervisor is not None
        assert self.protocol is not None
        op = message.get("op")
        result: dict[str, Any]
        if op == "status":
            result = self.supervisor.snapshot()
        elif op == "metrics":
            result = self.supervisor.metrics_snapshot()
        else:
            result = {"error": f"unknown op {op!r}"}
        self.protocol.send({"reply": message.get("ask"), "result": result})

    def _parent_gone(self) -> None:
        """The parent closed the channel: it is gone (or going); stop serving."""
        import os

        if not self.stopped:
            os.kill(os.getpid(), signal.SIGTERM)

    def ready(self, status: str) -> None:
        """Sent once every listener serves."""
        if self.protocol is not None:
            self.protocol.send({"event": "ready", "status": status})

    def reloading(self) -> None:
        """Workers never reload (the parent starts new ones)."""

    def stopping(self) -> None:
        """The drain started."""
        self.stopped = True
        if self.protocol is not None:
            self.protocol.send({"event": "stopping"})

    def watchdog(self) -> None:
        """Never asked: watchdog_interval_s is None."""

    def send_final(self, supervisor: Supervisor) -> None:
        """The last message: this worker's final numbers, written blocking."""
        self.stopped = True
        try:
            self.channel.setblocking(True)
            self.channel.settimeout(5.0)
            self.channel.sendall(
                encode({"event": "final", "status": supervisor.metrics_snapshot()})
            )
        except OSError:
            pass  # the parent is gone: nobody to tell
        finally:
            self.channel.close()
