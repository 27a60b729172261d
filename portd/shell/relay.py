"""Relays between stdin/stdout and sockets, the data path of ``listen`` and ``connect``.

Two threads move bytes with blocking I/O: stdin and stdout may be regular files, which
epoll cannot watch, and blocking reads and writes give flow control for free (a slow
stdout stops reads from the socket; a peer that does not read stops reads from stdin).

End-of-stream rules, the same for listen and connect (docs/shell.md, "EOF handling"):

- stdin ends: half-close the connection and keep reading (default); close at once
  (``--close-on-eof``); or half-close and quit SECS later (``-q SECS``).
- the peer ends: stop reading. The session is over once portd has nothing left to send:
  stdin reached its end, or stdin is a terminal (nobody is piping a file in).

As nc: ``-C`` sends a LF not after a CR as CRLF, ``-i SECS`` sends stdin a line at a
time SECS apart, ``-w SECS`` ends a session idle (no byte either way) for SECS, exit 0.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from portd.shell.stats import Transfer
from portd.shell.threads import join_in_main, start_thread, wait_in_main

BUFFER_SIZE = 256 * 1024
Receive = Callable[[memoryview], tuple[int, Any]]  # a datagram into the buffer: size, sender
Send = Callable[[bytes, Any], object]  # a datagram to a sender
MAX_DATAGRAM = 65507
STDIN, STDOUT = 0, 1


class EofPolicy(NamedTuple):
    """What stdin's end means: close at once, quit after a delay, or wait for the peer."""

    close_on_eof: bool = False
    quit_after_s: float | None = None
    read_stdin: bool = True  # -d: never read stdin (the connection is never half-closed)


class RelayOptions(NamedTuple):
    """nc's shaping of what is sent (-C, -i) and its idle timeout (-w)."""

    crlf: bool = False
    line_delay_s: float = 0.0
    idle_timeout_s: float | None = None


class LineShaper:
    """Turns stdin chunks into what is sent: CRLF line ends (-C), a line at a time (-i)."""

    def __init__(self, options: RelayOptions, stop: threading.Event) -> None:
        self.options = options
        self.stop = stop
        self._ended_with_cr = False

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """What to send for ``data``, waiting -i SECS after each line (stops early at the
        session's end)."""
        delay = self.options.line_delay_s
        if not delay:
            yield self._crlf(data) if self.options.crlf else data
            return
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line = data[start : end + 1]
            yield self._crlf(line) if self.options.crlf else line
            start = end + 1
            if self.stop.wait(delay):
                return
        if start < len(data):
            rest = data[start:]
            yield self._crlf(rest) if self.options.crlf else rest

    def _crlf(self, data: bytes) -> bytes:
        out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._ended_with_cr and data.startswith(b"\n"):
            out = out[1:]  # its CR went out with the previous chunk
        self._ended_with_cr = data.endswith(b"\r")
        return out


def write_all(fd: int, data: memoryview | bytes) -> None:
    """os.write until every byte is out (pipes and terminals take partial writes)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Session:
    """Shared end-of-session state for the relay threads: the first finish wins."""

    def __init__(
        self, transfer: Transfer, policy: EofPolicy, options: RelayOptions | None = None
    ) -> None:
        self.transfer = transfer
        self.policy = policy
        self.options = options or RelayOptions()
        self.done = threading.Event()
        self.shaper = LineShaper(self.options, self.done)
        self.last_active = time.monotonic()
        self.status = 0
        self.message: str | None = None
        self._lock = threading.Lock()

    def finish(self, status: int = 0, message: str | None = None) -> None:
        """End the session (only the first call counts)."""
        with self._lock:
            if self.done.is_set():
                return
            self.status, self.message = status, message
            self.done.set()

    def stdin_chunks(self) -> Iterator[bytes]:
        """What to send from stdin, piece by piece (shaped by -C, -i), until its end; a
        read error ends the session."""
        while True:
            try:
                data = os.read(STDIN, BUFFER_SIZE)
            except OSError as exc:
                self.finish(1, f"cannot read stdin: {exc.strerror}")
                return
            if not data:
                return
            yield from self.shaper.pieces(data)

    def touch(self) -> None:
        """A byte moved: the idle timeout (-w) starts again."""
        self.last_active = time.monotonic()

    def watch_idle(self) -> None:
        """With -w SECS: end the session (status 0, as nc) once idle that long."""
        timeout_s = self.options.idle_timeout_s
        if timeout_s:
            self.touch()
            start_thread(self._end_when_idle, timeout_s)

    def _end_when_idle(self, timeout_s: float) -> None:
        while not self.done.wait(max(0.0, self.last_active + timeout_s - time.monotonic())):
            if time.monotonic() - self.last_active >= timeout_s:
                self.finish(0)
                return

    def quit_later(self) -> None:
        """Apply -q after stdin's end: finish once the delay has passed."""
        delay = self.policy.quit_after_s
        if delay is not None and delay >= 0:
            start_thread(self._finish_after, delay)

    def _finish_after(self, delay: float) -> None:
        if not self.done.wait(delay):
            self.finish()


class StreamRelay:
    """stdin -> socket and socket -> stdout for one connected TCP socket."""

    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock = sock
        self.session = session
        # Nobody pipes a file in (a terminal, or -d): the peer's end ends the session.
        self.stdin_is_tty = os.isatty(STDIN) or not session.policy.read_stdin
        self._peer_done = False
        self._stdin_done = False
        self._lock = threading.Lock()

    def run(self) -> None:
        """Relay until the session ends; the caller closes the socket."""
        reader = start_thread(self._socket_to_stdout)
        if self.session.policy.read_stdin:
            start_thread(self._stdin_to_socket)
        self.session.watch_idle()
        wait_in_main(self.session.done)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # unblocks the reader's recv
        join_in_main(reader)  # it may still be writing to a stalled stdout

    def _socket_to_stdout(self) -> None:
        buffer = bytearray(BUFFER_SIZE)
        view = memoryview(buffer)
        received = self.session.transfer.received
        while True:
            try:
                count = self.sock.recv_into(buffer)
            except OSError as exc:
                self.session.finish(1, f"connection lost: {exc.strerror or exc}")
                return
            if count == 0:
                break
            self.session.touch()
            received.add(view[:count])
            try:
                write_all(STDOUT, view[:count])
            except BrokenPipeError:  # `| head`: the reader has what it wanted
                self.session.finish(0)
                return
            except OSError as exc:
                self.session.finish(1, f"cannot write to stdout: {exc.strerror}")
                return
        with self._lock:
            self._peer_done = True
            over = self._stdin_done or self.stdin_is_tty
        if over:
            self.session.finish(0)

    def _stdin_to_socket(self) -> None:
        sent = self.session.transfer.sent
        for data in self.session.stdin_chunks():
            try:
                self.sock.sendall(data)
            except OSError as exc:
                if not self.session.done.is_set():
                    reason = exc.strerror or str(exc)
                    self.session.finish(1, f"peer stopped reading before stdin ended: {reason}")
                return
            self.session.touch()
            sent.add(data)
        self._stdin_ended()

    def _stdin_ended(self) -> None:
        if self.session.policy.close_on_eof:
            self.session.finish(0)
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        with self._lock:
            self._stdin_done = True
            over = self._peer_done
        if over:
            self.session.finish(0)
        else:
            self.session.quit_later()


class DatagramRelay:
    """stdin -> datagrams and datagrams -> stdout on UDP or unix datagram sockets.

    Connected (``portd connect -u``, no ``endpoint``): every datagram goes to its peer.
    Listening: the endpoint reads each datagram with its typed sender, and replies go to
    whoever sent the last datagram that can be answered, from the socket it reached
    (``*`` listens on IPv4 and IPv6); stdin waits for a first such sender. A unix sender
    that bound no path cannot be answered: its datagrams reach stdout, and a line on
    stderr says so once. With ``verbose``, a line names each new sender (a unix one by
    pid and uid). Each read from stdin becomes one datagram (split at 65,507 bytes).
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        session: Session,
        endpoint: Any = None,
        verbose: bool = False,
    ) -> None:
        self.sockets = sockets
        self.session = session
        self.endpoint = endpoint
        self.connected = endpoint is None
        self.verbose = verbose
        self.reply: tuple[Send, Any] | None = None
        self._last_sender: Any = None
        self._warned_unanswerable = False
        self._have_peer = threading.Event()
        if self.connected:
            self._have_peer.set()

    def run(self) -> None:
        """Relay until the session ends; the caller closes the sockets."""
        for sock in self.sockets:
            start_thread(self._socket_to_stdout, sock)
        if self.session.policy.read_stdin:
            start_thread(self._stdin_to_socket)
        if self.connected:
            self.session.watch_idle()
        wait_in_main(self.session.done)

    def _socket_to_stdout(self, sock: socket.socket) -> None:
        buffer = bytearray(BUFFER_SIZE)
        view = memoryview(buffer)
        receive, send = self._io(sock)
        received = self.session.transfer.received
        while True:
            try:
                size, sender = receive(view)
            except ConnectionRefusedError:
                self.session.finish(1, "connection refused (nothing listens on that UDP port)")
                return
            except OSError as exc:
                self.session.finish(1, f"receive failed: {exc.strerror}")
                return
            if send is not None:
                self._heard(send, sender)
            self.session.touch()
            received.add(view[:size])
            try:
                write_all(STDOUT, view[:size])
            except BrokenPipeError:
                self.session.finish(0)
                return
            except OSError as exc:
                self.session.finish(1, f"cannot write to stdout: {exc.strerror}")
                return

    def _io(self, sock: socket.socket) -> tuple[Receive, Send | None]:
        """How ``sock`` is read (size and sender), and how a reply is sent (listening)."""
        if self.endpoint is not None:
            receive, send = self.endpoint.datagram_io(sock)
            return receive, send

        def receive_connected(into: memoryview) -> tuple[int, Any]:
            return sock.recv_into(into), None

        return receive_connected, None

    def _heard(self, send: Send, sender: Any) -> None:
        """A datagram came from ``sender``: replies go there from now on, if they can."""
        if sender != self._last_sender:
            self._last_sender = sender
            if self.verbose:
                print(f"datagram from {sender}", file=sys.stderr, flush=True)
        if getattr(sender, "path", None) == "":  # a unix socket that bound no path
            if not self._warned_unanswerable:
                self._warned_unanswerable = True
                print(
                    f"portd: {sender} sends from a socket without a path, so replies cannot "
                    "reach it (a client must bind one: nc -uU, socat UNIX-SENDTO:PATH,bind=...)",
                    file=sys.stderr,
                    flush=True,
                )
            return
        self.reply = (send, sender)
        if not self._have_peer.is_set():
            self._have_peer.set()
            self.session.watch_idle()  # as nc -lu: from the first datagram on

    def _stdin_to_socket(self) -> None:
        sent = self.session.transfer.sent
        for data in self.session.stdin_chunks():
            self._have_peer.wait()
            for start in range(0, len(data), MAX_DATAGRAM):
                chunk = data[start : start + MAX_DATAGRAM]
                if not self._send(chunk):
                    return
                self.session.touch()
                sent.add(chunk)
        if self.session.policy.close_on_eof:
            self.session.finish(0)
        else:
            self.session.quit_later()

    def _send(self, chunk: bytes) -> bool:
        try:
            if self.reply is None:
                self.sockets[0].send(chunk)
            else:
                send, peer = self.reply
                send(chunk, peer)
        except OSError as exc:
            self.session.finish(1, f"send failed: {exc.strerror}")
            return False
        return True
