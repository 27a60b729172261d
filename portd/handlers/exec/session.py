"""One connection served by one program: starting it, the EOF and exit rules, signals.

Two ways to carry the bytes, chosen per connection:

- *socket*: the program gets the connection's socket as stdin and stdout (stderr too
  with ``stderr = "connection"``); portd reads nothing while it runs;
- *relay*: pipes to the program, bytes relayed by portd with flow control both ways
  (a TLS layer, a limit that watches the bytes, or ``relay = true``).

The rules, the same on both paths:

- the client's FIN closes the program's stdin (socket: it reads EOF itself; relay: portd
  closes the pipe after what was queued) and its output still reaches the client;
- the program's exit closes the connection after what it wrote (FIN); portd then reads
  and drops what the client still sends, for LINGER_S or LINGER_BYTES, so a client that
  sent more than the program read sees the FIN rather than an RST;
- a program killed by a signal, or stopped at ``timeout_s``, resets the connection;
- the client's reset (or a connection lost to an error) sends the program's process
  group SIGHUP, then SIGKILL after ``kill_grace_s``; a connection portd cut (the end of
  the drain) kills it at once;
- the drain sends SIGTERM at once;
- leftovers of the program's session get SIGHUP when it exits;
- over TLS (always relayed) the client's close_notify ends the connection, as asyncio's
  TLS has no half-close: the program's stdin gets what was sent, then EOF, and SIGHUP
  after ``kill_grace_s`` if it has not exited; its exit closes at once (close_notify);
- the program is always reaped: its exit status and run time go into
  ``connection_closed`` (``exit_code``, ``exit_signal``, ``program_ms``), which waits for
  it through a hold, as does the listener's ``max_connections`` slot.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

from portd.handlers.base import Connection, FdWatch, StreamSession
from portd.handlers.exec.environment import connection_environment
from portd.handlers.exec.pipes import LOW_WATER, PipeReader, PipeWriter
from portd.handlers.exec.process import Child
from portd.handlers.exec.stderr import StderrLog

if TYPE_CHECKING:
    from portd.handlers.exec.handler import ExecHandler

LINGER_S = 2.0
LINGER_BYTES = 1 << 20


class ExecSession(StreamSession):
    """A program on one connection (see the module for the rules)."""

    def __init__(self, conn: Connection, handler: ExecHandler) -> None:
        self.conn = conn
        self.handler = handler
        self.release = conn.hold()
        self.phase = "running"  # running -> exited -> lingering -> done
        self.child: Child | None = None
        self.reason: str | None = None  # why portd ended it early (timeout_s, ...)
        self.lost = False
        self.client_eof = False
        self.paused = False
        self.lingered = 0
        self.stdin: PipeWriter | None = None
        self.stdout: PipeReader | None = None
        self.stderr: StderrLog | None = None
        self.lent = False
        self.lost_to_portd = False  # portd ended the connection (not the client)
        self.closed_tls = False  # a TLS client's close_notify ended it (a clean leave)
        self.stop_asked = False  # the drain began before the program had started
        self.exit_watch: FdWatch | None = None
        self.timeout: Any = None
        self.kill_timer: Any = None
        self.linger_timer: Any = None
        self._start()

    # Starting.

    def _start(self) -> None:
        handler, conn = self.handler, self.conn
        sock = None if handler.settings["relay"] else conn.lend_socket()
        env = connection_environment(
            handler.base_env, handler.settings["env"], peer=conn.peer, protocol="tcp",
            local=conn.local_address, listener=conn.listener, conn_id=conn.conn_id,
        )  # fmt: skip
        opened: list[int] = []  # the program's ends: closed once it has them

        def close_after() -> None:
            for fd in opened:
                os.close(fd)
            if sock is not None:
                sock.close()

        try:
            stdio = self._socket_stdio(sock, opened) if sock else self._relay_stdio(opened)
        except OSError as exc:  # out of descriptors for its pipes
            close_after()
            self._failed_to_start(exc)
            return
        handler.sessions.add(self)
        if self.stdin is not None:
            conn.resume_reading()  # relay: a lending transport starts paused
        handler.spawner.start(handler.program, stdio, env, clock=conn.clock,
                              done=self._spawned, close_after=close_after)  # fmt: skip

    def _spawned(self, result: Child | OSError) -> None:
        """The spawn finished in its thread (this runs on the loop)."""
        if isinstance(result, OSError):
            self._failed_to_start(result)
            return
        conn, settings = self.conn, self.handler.settings
        self.child = child = result
        self.exit_watch = conn.watch(child.pidfd, self._exited)
        if self.lost:  # the client left while it started
            self._gone_under_it()
            return
        if self.stdout is not None:
            self.stdout.resume()
        if settings["timeout_s"]:
            self.timeout = conn.clock.call_later(settings["timeout_s"], self._timed_out)
        if self.stop_asked or conn.draining:
            child.kill_group(signal.SIGTERM)

    def _socket_stdio(self, sock: Any, opened: list[int]) -> tuple[int, int, int]:
        self.lent = True
        fd = sock.fileno()
        return fd, fd, self._stderr_fd(fd, opened)

    def _relay_stdio(self, opened: list[int]) -> tuple[int, int, int]:
        stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
        opened.append(stdin_read)
        self.stdin = PipeWriter(self.conn, stdin_write, self._stdin_drained)
        stdout_read, stdout_write = os.pipe2(os.O_CLOEXEC)
        opened.append(stdout_write)
        self.stdout = PipeReader(self.conn, stdout_read, self._deliver, self._stdout_ended)
        return stdin_read, stdout_write, self._stderr_fd(stdout_write, opened)

    def _stderr_fd(self, connection_fd: int, opened: list[int]) -> int:
        mode = self.handler.settings["stderr"]
        if mode == "connection":
            return connection_fd
        if mode == "null":
            return self.handler.devnull
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        opened.append(write_end)
        self.stderr = StderrLog(read_end, self.conn.log)
        self.stderr.watch = self.conn.watch(read_end, self.stderr.readable)
        return write_end

    def _failed_to_start(self, exc: OSError) -> None:
        self._close_pipes()
        self.handler.sessions.discard(self)
        self.handler.start_failed(self.conn.log, exc)
        self.phase = "done"
        self.conn.reset(f"exec failed: {exc.strerror or exc}")
        self.release()

    # The program's end.

    def _exited(self) -> None:
        child = self.child
        assert child is not None
        status = child.exited()
        if status is None:
            return  # woken early: not yet
        self._cancel_watch()
        for timer in (self.timeout, self.kill_timer):
            if timer is not None:
                timer.cancel()
        self.timeout = self.kill_timer = None
        self.conn.annotate(**status.fields(), program_ms=child.running_ms)
        child.kill_group(signal.SIGHUP)  # leftovers of its session (none: ESRCH)
        self.phase = "exited"
        if self.stdout is not None and not self.stdout.at_eof and not self.lost:
            # Relay: its output may still be in the pipe; leftovers may hold it open.
            self.kill_timer = self.conn.clock.call_later(
                self.handler.settings["kill_grace_s"], self._stdout_stuck
            )
            return
        self._program_gone()

    def _stdout_stuck(self) -> None:
        assert self.child is not None
        self.kill_timer = None
        self.child.kill_group(signal.SIGKILL)
        self._program_gone()

    def _program_gone(self) -> None:
        """Reaped and released; the connection ends by the rules."""
        assert self.child is not None
        status = self.child.status
        self.child.reap()
        self.handler.sessions.discard(self)
        self._close_pipes()
        if self.lost:
            self._done()
        elif self.reason is not None or (status is not None and status.killed):
            why = self.reason or f"program killed by {status.signal if status else '?'}"
            self._done()
            self.conn.reset(why)
        else:
            self._linger()
        self.release()

    def _linger(self) -> None:
        """FIN after the output; drop what the client still sends, for a while."""
        self.phase = "lingering"
        conn = self.conn
        if self.lent and conn.reclaim_socket():
            self.client_eof = True  # it half-closed, nothing unread: the close is a FIN
        # TLS: no half-close to send, so close now; the TLS shutdown (close_notify) then
        # reads and drops what the client still sends until its own close_notify.
        if self.client_eof or conn.tls is not None:
            self._done()
            conn.close()
            return
        conn.write_eof()
        conn.resume_reading()
        self.linger_timer = conn.clock.call_later(LINGER_S, self._linger_over)

    def _linger_over(self) -> None:
        self.linger_timer = None
        self._done()
        self.conn.close()

    def _done(self) -> None:
        self.phase = "done"
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None

    # portd's reasons to stop the program.

    def _timed_out(self) -> None:
        self.timeout = None
        self.reason = f"timeout_s: the program ran {self.handler.settings['timeout_s']:g} s"
        self._stop(signal.SIGTERM)

    def _stop(self, signum: int) -> None:
        """``signum`` now, SIGKILL after kill_grace_s if it is still running."""
        if self.child is None or self.phase != "running":
            return
        self.child.kill_group(signum)
        if self.kill_timer is None:
            self.kill_timer = self.conn.clock.call_later(
                self.handler.settings["kill_grace_s"], self._kill
            )

    def _kill(self) -> None:
        self.kill_timer = None
        if self.child is not None and self.phase == "running":
            self.child.kill_group(signal.SIGKILL)

    def shutdown_requested(self) -> None:
        if self.phase == "running" and self.child is not None:
            self.child.kill_group(signal.SIGTERM)
        elif self.phase == "running":
            self.stop_asked = True
        elif self.phase == "lingering":
            self._done()
            self.conn.close()

    # The client side.

    def data_received(self, data: bytes) -> None:
        if self.phase == "running" and self.stdin is not None:
            self.stdin.write(data)
            if self.stdin.full and not self.paused:
                self.paused = True
                self.conn.pause_reading()
            return
        self.lingered += len(data)  # the program is gone, or closed its stdin: drop it
        if self.lingered > LINGER_BYTES and self.phase == "lingering":
            self._done()
            self.conn.close()

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.phase == "lingering":
            self._done()
            return False  # close: our FIN is out already
        if self.stdin is not None:
            self.stdin.close_after_flush()
        return self.conn.tls is None  # TLS: the close_notify ends the connection anyway

    def _stdin_drained(self) -> None:
        if self.paused and self.stdin is not None and len(self.stdin.queue) <= LOW_WATER:
            self.paused = False
            self.conn.resume_reading()

    def _deliver(self, data: bytes) -> None:
        self.conn.write(data)

    def _stdout_ended(self) -> None:
        # While it runs, the connection waits for its exit, as on the socket path (where
        # closing stdout leaves the socket open as stdin): its death also closes stdout,
        # before the exit can be read, and a FIN then would hide a kill's RST.
        if self.phase == "exited":
            if self.kill_timer is not None:
                self.kill_timer.cancel()
                self.kill_timer = None
            self._program_gone()

    def pause_writing(self) -> None:
        if self.stdout is not None:
            self.stdout.pause()

    def resume_writing(self) -> None:
        if self.stdout is not None:
            self.stdout.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        # A TLS client's close_notify closes the connection (asyncio's TLS has no
        # half-close): the client left cleanly; otherwise a clean loss is portd's doing
        # (the end of the drain, a handler failure).
        self.closed_tls = exc is None and self.client_eof and self.conn.tls is not None
        self.lost_to_portd = exc is None and not self.closed_tls
        if self.phase != "running":
            self._done()
            return
        if self.stdin is not None and not self.closed_tls:  # TLS: what it sent, then EOF
            self.stdin.close()
        if self.stdout is not None:
            self.stdout.close()
        if self.child is not None:  # else it is still starting: _spawned sees to it
            self._gone_under_it()

    def _gone_under_it(self) -> None:
        assert self.child is not None
        if self.closed_tls:
            # Its output has nowhere to go: kill_grace_s to finish on its own, then SIGHUP.
            grace = self.handler.settings["kill_grace_s"]
            self.kill_timer = self.conn.clock.call_later(grace, self._hang_up_late)
        else:
            self._hang_up(self.lost_to_portd)

    def _hang_up_late(self) -> None:
        self.kill_timer = None
        self._stop(signal.SIGHUP)

    def _hang_up(self, by_portd: bool) -> None:
        """The connection is gone under the program: portd cut it (SIGKILL now), or the
        client reset it or vanished (SIGHUP, as a terminal would, SIGKILL later)."""
        assert self.child is not None
        if by_portd:
            self.child.kill_group(signal.SIGKILL)
        else:
            self._stop(signal.SIGHUP)

    # Clean-up.

    def _cancel_watch(self) -> None:
        if self.exit_watch is not None:
            self.exit_watch.cancel()
            self.exit_watch = None

    def _close_pipes(self) -> None:
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                pipe.close()

    def finish_now(self) -> None:
        """The listener is closing and the program is dead (or never dies): record what
        is known, reap if possible, release."""
        child = self.child
        self._cancel_watch()
        for timer in (self.timeout, self.kill_timer, self.linger_timer):
            if timer is not None:
                timer.cancel()
        if child is not None and not child.reaped:
            child.kill_group(signal.SIGKILL)
            status = child.exited()
            if status is not None:
                self.conn.annotate(**status.fields(), program_ms=child.running_ms)
                child.reap()
            else:
                with contextlib.suppress(OSError):
                    os.close(child.pidfd)
                child.reaped = True  # init reaps it once portd exits
        self._close_pipes()
        self.handler.sessions.discard(self)
        self.phase = "done"
        self.release()
