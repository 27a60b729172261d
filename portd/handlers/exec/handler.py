"""The exec handler: one program per connection (inetd's ``nowait``, ``nc -e``), or
for UDP one program holding the socket until it exits (inetd's ``wait``)."""

from __future__ import annotations

import os
import select
import shlex
import signal
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from portd.endpoints.base import Peer, ProtocolName
from portd.errors import ConfigError
from portd.handlers.base import Connection, Handler, LendingEndpoint, StreamSession
from portd.handlers.exec.datagram import DatagramProgram
from portd.handlers.exec.environment import base_environment
from portd.handlers.exec.process import Child, Program, Spawner
from portd.handlers.exec.session import ExecSession
from portd.handlers.exec.settings import (
    EXEC_OPTIONS,
    child_path,
    command_argv,
    find_program,
    resolve_identity,
    settings_problems,
)
from portd.options import Settings

CLOSE_WAIT_S = 1.0  # at the listener's close: how long killed programs may take to die
FAILURE_LOG_INTERVAL_S = 1.0


class ExecHandler(Handler):
    """Runs ``command`` per connection with the connection as its stdin and stdout."""

    name = "exec"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp", "udp"})
    options = EXEC_OPTIONS
    takes_sockets = True
    # Each connection is a process: bound them as systemd's MaxConnections= does.
    default_limits: ClassVar[Mapping[str, Any]] = {"max_connections": 64}

    @classmethod
    def check_settings(cls, settings: Settings) -> list[str]:
        """A string command without ``shell``, a program not found, a missing ``cwd``, an
        unknown user, or a user switch without root."""
        return settings_problems(settings)

    @classmethod
    def check_protocol(cls, settings: Settings, protocol: ProtocolName) -> list[str]:
        """On a datagram listener the program always holds the socket (inetd's wait):
        there is no connection to write stderr to and nothing to relay."""
        if protocol != "udp":
            return []
        problems = []
        if settings.get("stderr") == "connection":
            problems.append('stderr = "connection": a datagram socket has no peer to write '
                            'to; use "log" or "null"')  # fmt: skip
        if settings.get("relay"):
            problems.append("relay = true: over UDP the program always holds the socket")
        return problems

    @classmethod
    def needs_root(cls, settings: Settings) -> str | None:
        """A program run as another user needs portd to stay root."""
        who = settings.get("user") or settings.get("group")
        return f"user/group {who!r} runs the program as another user" if who else None

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        problems = settings_problems(settings)
        if problems:
            raise ConfigError(problems)
        identity = resolve_identity(settings)
        argv = command_argv(settings)
        path = find_program(argv[0], child_path(settings))
        assert path is not None  # settings_problems found it
        self.program = Program(path, tuple(argv), settings["cwd"] or None, identity.uid,
                               identity.gid).with_spawn()  # fmt: skip
        self.base_env = base_environment(settings, identity)
        self.sessions: set[ExecSession] = set()
        self.datagram_programs: set[DatagramProgram] = set()
        self._failures = 0
        self._failure_logged = 0.0
        self.spawner = Spawner()
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def start_fields(self, relay_reason: str | None) -> Mapping[str, Any]:
        """The command, and whether programs hold the socket or portd relays (and why)."""
        reason = "relay = true" if self.settings["relay"] else relay_reason
        fields: dict[str, Any] = {"command": shlex.join(self.program.argv)}
        fields["exec_io"] = "relay" if reason else "socket"
        if reason:
            fields["relay_reason"] = reason
        return fields

    def open_session(self, conn: Connection) -> StreamSession:
        return ExecSession(conn, self)

    def datagram_socket_ready(self, peer: Peer, endpoint: LendingEndpoint) -> None:
        DatagramProgram(self, peer, endpoint)

    def start_failed(self, log: Any, exc: OSError) -> None:
        """A program could not be started: one ``exec_failed`` line a second at most."""
        self._failures += 1
        now = time.monotonic()
        if now - self._failure_logged >= FAILURE_LOG_INTERVAL_S:
            self._failure_logged = now
            log.warning("exec_failed", error=exc.strerror or str(exc), path=self.program.path,
                        failures=self._failures)  # fmt: skip

    def close(self) -> None:
        """Kill what still runs, wait a little for it to die, reap it, release its
        connection (the backstop behind the drain's SIGTERM and SIGKILL)."""
        unclaimed = self.spawner.close()  # started, never handed to the loop
        holders: list[ExecSession | DatagramProgram] = [*self.sessions, *self.datagram_programs]
        running = [h.child for h in holders if h.child is not None and not h.child.reaped]
        for child in (*running, *unclaimed):
            child.kill_group(signal.SIGKILL)
        _wait_for_exits([*running, *unclaimed], CLOSE_WAIT_S)
        for holder in holders:
            holder.finish_now()
        for child in unclaimed:
            if child.exited() is not None:
                child.reap()
        if self.devnull >= 0:
            os.close(self.devnull)
            self.devnull = -1


def _wait_for_exits(children: list[Child], timeout_s: float) -> None:
    """Block until every child has exited, or ``timeout_s`` passed."""
    poller = select.poll()
    for child in children:
        poller.register(child.pidfd, select.POLLIN)
    deadline = time.monotonic() + timeout_s
    while any(child.exited() is None for child in children):
        left_ms = (deadline - time.monotonic()) * 1000
        if left_ms <= 0:
            return
        poller.poll(left_ms)
