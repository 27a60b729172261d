"""exec over UDP: inetd's ``wait`` semantics. The datagram that wakes the listener is
left in the socket; one program gets the socket as its stdin and stdout and reads that
datagram and any that follow, from anyone, until it exits; then portd watches the socket
again. portd's datagram gate (allow/deny, rates, low source ports) judges the waking
datagram only: what comes while the program holds the socket is the program's to judge.

There is no connection, so no ``connection_closed``: one ``program_exited`` line says
who woke it and how it ended (``exit_code``, ``exit_signal``, ``program_ms``). The
drain sends SIGTERM at once and SIGKILL at its end; ``timeout_s`` applies; the program's
environment has ``PROTO=UDP`` and the waking datagram's sender as ``UDPREMOTEIP`` and
``UDPREMOTEPORT``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

from portd.endpoints.base import Peer
from portd.handlers.base import FdWatch, LendingEndpoint
from portd.handlers.exec.environment import connection_environment
from portd.handlers.exec.process import Child
from portd.handlers.exec.stderr import StderrLog

if TYPE_CHECKING:
    from portd.handlers.exec.handler import ExecHandler


class DatagramProgram:
    """The program holding one datagram socket until it exits."""

    def __init__(self, handler: ExecHandler, peer: Peer, endpoint: LendingEndpoint) -> None:
        self.handler = handler
        self.peer = peer
        self.endpoint = endpoint
        self.child: Child | None = None
        self.stderr: StderrLog | None = None
        self.exit_watch: FdWatch | None = None
        self.timers: list[Any] = []
        self.reason: str | None = None
        self.stop_asked = False
        sock, self.release = endpoint.lend_socket(self.shutdown, self.abort)
        opened: list[int] = []

        def close_after() -> None:
            for fd in opened:
                os.close(fd)
            sock.close()

        env = connection_environment(
            handler.base_env, handler.settings["env"], peer=peer, protocol="udp",
            local=endpoint.local_address, listener=endpoint.listener, conn_id=None,
        )  # fmt: skip
        try:
            stdio = (sock.fileno(), sock.fileno(), self._stderr_fd(opened))
        except OSError as exc:
            close_after()
            self._failed(exc)
            return
        handler.datagram_programs.add(self)
        handler.spawner.start(handler.program, stdio, env, clock=endpoint.clock,
                              done=self._spawned, close_after=close_after)  # fmt: skip

    def _spawned(self, result: Child | OSError) -> None:
        if isinstance(result, OSError):
            self.handler.datagram_programs.discard(self)
            self._failed(result)
            return
        self.child = result
        self.exit_watch = self.endpoint.watch(result.pidfd, self._exited)
        settings = self.handler.settings
        if settings["timeout_s"]:
            self.timers.append(
                self.endpoint.clock.call_later(settings["timeout_s"], self._timed_out)
            )
        if self.stop_asked:
            result.kill_group(signal.SIGTERM)

    def _failed(self, exc: OSError) -> None:
        self.handler.start_failed(self.endpoint.log, exc)
        if self.stderr is not None:
            self.stderr.close()
        self.release(drop=True)  # it never ran: its datagram goes, portd reads again

    def _stderr_fd(self, opened: list[int]) -> int:
        if self.handler.settings["stderr"] == "null":
            return self.handler.devnull
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        opened.append(write_end)
        self.stderr = StderrLog(read_end, self.endpoint.log.bind(peer=str(self.peer)))
        self.stderr.watch = self.endpoint.watch(read_end, self.stderr.readable)
        return write_end

    def _exited(self) -> None:
        child = self.child
        assert child is not None
        status = child.exited()
        if status is None:
            return
        child.kill_group(signal.SIGHUP)  # leftovers of its session
        self._finish()

    def _finish(self) -> None:
        child = self.child
        assert child is not None
        if self.exit_watch is not None:
            self.exit_watch.cancel()
            self.exit_watch = None
        for timer in self.timers:
            timer.cancel()
        status = child.status
        fields: dict[str, Any] = status.fields() if status is not None else {"exit_code": None}
        if self.reason:
            fields["error"] = self.reason
        self.endpoint.log.info(
            "program_exited", peer=str(self.peer), program_ms=child.running_ms, **fields
        )
        child.reap()
        if self.stderr is not None:
            self.stderr.close()
        self.handler.datagram_programs.discard(self)
        self.release()

    def _timed_out(self) -> None:
        self.reason = f"timeout_s: the program ran {self.handler.settings['timeout_s']:g} s"
        self._stop(signal.SIGTERM)

    def _stop(self, signum: int) -> None:
        if self.child is None or self.child.status is not None:
            return
        self.child.kill_group(signum)
        self.timers.append(
            self.endpoint.clock.call_later(self.handler.settings["kill_grace_s"], self.abort)
        )

    def shutdown(self) -> None:
        """The drain started: SIGTERM."""
        if self.child is not None:
            self.child.kill_group(signal.SIGTERM)
        else:
            self.stop_asked = True

    def abort(self) -> None:
        """The drain is over, or the grace after a SIGTERM: SIGKILL."""
        if self.child is not None and self.child.status is None:
            self.child.kill_group(signal.SIGKILL)

    def finish_now(self) -> None:
        """The listener is closing: record what is known and give the socket back."""
        child = self.child
        if child is None:  # still starting: the handler kills what the spawner left
            self.handler.datagram_programs.discard(self)
            self.release()
            return
        if child.reaped:
            return
        if child.exited() is None:
            with contextlib.suppress(OSError):
                os.close(child.pidfd)
            child.reaped = True  # init reaps it once portd exits
            self.handler.datagram_programs.discard(self)
            self.release()
            return
        self._finish()
