"""``portd listen``: nc -l with explicit EOF rules, concurrent -k, and any handler ad hoc."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from portd.binds import BindSpec, Protocol, SocketAddress, format_peer, parse_bind, resolve_bind
from portd.errors import UsageError
from portd.shell.ncargs import bind_host, listen_bind, require_numeric
from portd.shell.relay import (
    BUFFER_SIZE,
    STDIN,
    STDOUT,
    DatagramRelay,
    EofPolicy,
    LineShaper,
    RelayOptions,
    Session,
    StreamRelay,
    write_all,
)
from portd.shell.stats import Transfer
from portd.sockets import bound_addresses, open_listener_sockets


class ListenOptions:
    """The parsed options of ``portd listen`` (a plain class: no dataclass import cost).

    Raises:
        UsageError: nc-style words that do not make one bind, or options that disagree.
        BindSyntaxError: the bind does not parse (-n: a host name).
    """

    def __init__(self, args: Any) -> None:
        self.protocol: Protocol = "udp" if args.udp else "tcp"
        self.bind_text = listen_bind(args.where, args.port, args.source)
        if args.numeric:
            require_numeric(bind_host(self.bind_text), for_connect=False)
        self.spec: BindSpec = parse_bind(self.bind_text, self.protocol)
        self.families = address_families(args.ipv4, args.ipv6)
        self.keep: bool = args.keep
        self.verbose: bool = args.verbose
        self.port_file: str | None = args.port_file
        check_eof_flags(args)
        self.policy = EofPolicy(args.close_on_eof, args.quit_after, not args.no_stdin)
        self.relay = RelayOptions(args.crlf, args.interval, args.wait)
        if args.handler and (args.crlf or args.interval or args.wait):
            raise UsageError("-C, -i and -w shape the stdio relay; a handler takes --set "
                             "options instead (idle_timeout_s=SECS for -w)")  # fmt: skip
        self.gate: Any = None
        if args.set and args.keep and not args.handler:
            from portd.shell.admission import stdio_gate

            self.gate = stdio_gate(args.set)


def check_eof_flags(args: Any) -> None:
    """-N (half-close, the default) and --close-on-eof ask for opposite ends.

    Raises:
        UsageError: both were given.
    """
    if args.half_close and args.close_on_eof:
        raise UsageError("-N half-closes when stdin ends, --close-on-eof closes: give one")


def address_families(ipv4: bool, ipv6: bool) -> tuple[socket.AddressFamily, ...]:
    if ipv4 and not ipv6:
        return (socket.AF_INET,)
    if ipv6 and not ipv4:
        return (socket.AF_INET6,)
    return ()


def open_sockets(options: ListenOptions, backlog: int = 1024) -> list[socket.socket]:
    """Bind what the command line asks for and announce it on stderr (and --port-file).

    Raises:
        BindSyntaxError, BindError: the same messages and exit codes as the daemon.
    """
    addresses = resolve_bind(options.spec, options.protocol, options.families)
    sockets = open_listener_sockets(
        addresses, options.protocol, f"listen {options.spec}", backlog,
        skip_missing_ipv6=options.spec.is_wildcard and not options.families,
    )  # fmt: skip
    announce(bound_addresses(sockets), options.protocol, options.port_file)
    return sockets


def announce(addresses: Sequence[SocketAddress], protocol: str, port_file: str | None) -> None:
    """``listening on 127.0.0.1:40123 (tcp)`` on stderr; the port into ``port_file``."""
    where = ", ".join(str(address) for address in addresses)
    print(f"listening on {where} ({protocol})", file=sys.stderr, flush=True)
    if port_file:
        temporary = f"{port_file}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="ascii") as file:  # noqa: PTH123 - start-up time
            file.write(f"{addresses[0].port}\n")
        os.replace(temporary, port_file)  # noqa: PTH105 - readers never see a half-written file


def run_listen(options: ListenOptions) -> int:
    """Serve stdin/stdout over the socket(s); return the exit status."""
    sockets = open_sockets(options)
    try:
        if options.protocol == "udp":
            return _relay_datagrams(sockets, options)
        if options.keep:
            return _serve_many(sockets, options)
        conn, address = _accept_one(sockets)
    finally:
        for sock in sockets:
            sock.close()  # like nc -l: one connection, no further listening
    with conn:
        return _relay_stream(conn, format_peer(address), options)


def _accept_one(sockets: list[socket.socket]) -> tuple[socket.socket, Any]:
    """The next connection and its peer's address.

    The peer comes from accept(): getpeername() fails (ENOTCONN) on a connection the
    client reset while it waited in the backlog, and such a connection is still returned.
    """
    while True:
        readable, _, _ = select.select(sockets, [], [])
        for sock in readable:
            try:
                conn, address = sock.accept()
            except (BlockingIOError, ConnectionAbortedError):
                continue
            conn.setblocking(True)
            return conn, address


def _relay_stream(conn: socket.socket, peer: str, options: ListenOptions) -> int:
    if options.verbose:
        print(f"connection from {peer}", file=sys.stderr, flush=True)
    transfer = Transfer(options.verbose)
    session = Session(transfer, options.policy, options.relay)
    StreamRelay(conn, session).run()
    transfer.finish()
    return report_session(session, peer, options.verbose)


def report_session(session: Session, peer: str, verbose: bool, side: str = "from") -> int:
    """Print how the session ended; ``side`` is "to" for connect (the peer did not call us)."""
    if session.message:
        print(f"portd: {peer}: {session.message}", file=sys.stderr)
    elif verbose:
        print(f"connection {side} {peer} closed", file=sys.stderr)
    return session.status


def _relay_datagrams(sockets: list[socket.socket], options: ListenOptions) -> int:
    for sock in sockets:
        sock.setblocking(True)
    transfer = Transfer(options.verbose)
    session = Session(transfer, options.policy, options.relay)
    DatagramRelay(sockets, session, connected=False).run()
    transfer.finish()
    if session.message:
        print(f"portd: {session.message}", file=sys.stderr)
    return session.status


class _Clients:
    """-k: every connected client; stdin is sent to all, their bytes go to stdout.

    Serving ends only with Ctrl-C, or when stdout fails: then nothing received could be
    kept, so it ends (``ended``: quietly for a closed pipe, with the reason otherwise).
    """

    def __init__(self, options: ListenOptions) -> None:
        self.options = options
        self.lock = threading.Lock()
        self.stdout_lock = threading.Lock()
        self.stderr_lock = threading.Lock()
        self.clients: set[socket.socket] = set()
        self.stdin_done = False
        self.ended = threading.Event()
        self.status = 0
        self.message: str | None = None

    def accept_forever(self, sockets: list[socket.socket]) -> None:
        """Accept and serve until the process ends (the sockets may close under us then)."""
        with contextlib.suppress(OSError, ValueError):
            while True:
                self.add(*_accept_one(sockets))

    def add(self, conn: socket.socket, address: Any) -> None:
        """Serve a new client, or close it at once when a --set limit refuses it."""
        peer, host = format_peer(address), str(address[0])
        gate = self.options.gate
        with self.lock:
            reason = gate.admit(host) if gate is not None else None
            if reason is None:
                self.clients.add(conn)
                if self.stdin_done:
                    _half_close(conn)
        if reason is not None:
            conn.close()  # as the daemon: closed right after accept, before any byte
            self._report(f"connection from {peer} refused: {reason}")
            return
        threading.Thread(target=self._pump, args=(conn, peer, host), daemon=True).start()

    def _pump(self, conn: socket.socket, peer: str, host: str) -> None:
        self._report(f"connection from {peer}")
        if self.options.relay.idle_timeout_s:
            conn.settimeout(self.options.relay.idle_timeout_s)  # -w: nothing from it that long
        with contextlib.suppress(OSError):
            while data := conn.recv(BUFFER_SIZE):
                if not self._write_stdout(data, peer):
                    break
        with self.lock:
            self.clients.discard(conn)
            if self.options.gate is not None:
                self.options.gate.release(host)
        conn.close()
        self._report(f"connection from {peer} closed")

    def _write_stdout(self, data: bytes, peer: str) -> bool:
        """False when stdout failed (it used to be ignored: data dropped without a word)."""
        with self.stdout_lock:
            try:
                write_all(STDOUT, data)
            except BrokenPipeError:  # `| head`: the reader has what it wanted
                self._end(0)
                return False
            except OSError as exc:
                self._end(1, f"{peer}: cannot write to stdout: {exc.strerror}")
                return False
        return True

    def _end(self, status: int, message: str | None = None) -> None:
        with self.lock:
            if not self.ended.is_set():
                self.status, self.message = status, message
                self.ended.set()

    def _report(self, line: str) -> None:
        """-v: one line; print() writes text and newline separately, so threads take turns."""
        if self.options.verbose:
            with self.stderr_lock:
                print(line, file=sys.stderr, flush=True)

    def broadcast_stdin(self) -> None:
        shaper = LineShaper(self.options.relay, self.ended)
        while data := os.read(STDIN, BUFFER_SIZE):
            for piece in shaper.pieces(data):
                with self.lock:
                    targets = list(self.clients)
                for conn in targets:
                    with contextlib.suppress(OSError):
                        conn.sendall(piece)
        with self.lock:
            self.stdin_done = True
            for conn in self.clients:
                _half_close(conn)


def _half_close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def _serve_many(sockets: list[socket.socket], options: ListenOptions) -> int:
    """-k: serve clients concurrently until interrupted or stdout fails (nc -lk takes
    them one at a time)."""
    clients = _Clients(options)
    if options.policy.read_stdin:
        threading.Thread(target=clients.broadcast_stdin, daemon=True).start()
    threading.Thread(target=clients.accept_forever, args=(sockets,), daemon=True).start()
    clients.ended.wait()
    if clients.message:
        print(f"portd: {clients.message}", file=sys.stderr)
    return clients.status
