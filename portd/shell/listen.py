"""``portd listen``: nc -l with explicit EOF rules, concurrent -k, and any handler ad hoc.

A unix-domain socket (``unix:PATH``, ``-U PATH``; ``-u``: datagrams) is served the same
way; its file is removed once portd stops listening (Ctrl-C and SIGTERM included), and
a relative path is anchored at the working directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from portd.endpoints.base import ProtocolName
from portd.endpoints.parse import parse_endpoint
from portd.errors import UsageError
from portd.shell.bound import Listening
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
from portd.shell.threads import SIGNAL_CHECK_S, start_thread, wait_in_main

DEFAULT_MAX_CLIENTS = 128  # -k: each client takes a thread; beyond this, refuse
ACCEPT_RETRY_S = 0.1  # -k: out of descriptors, accept again after this
RESET_ON_CLOSE = b"\1\0\0\0\0\0\0\0"  # SO_LINGER on, 0 s: close() sends an RST


class ListenOptions:
    """The parsed options of ``portd listen`` (a plain class: no dataclass import cost).

    Raises:
        UsageError: nc-style words that do not make one bind, or options that disagree.
        BindSyntaxError: the bind does not parse (-n: a host name).
    """

    def __init__(self, args: Any) -> None:
        self.bind_text = listen_bind(args.where, args.port, args.source, args.unix)
        # -u, or else a tcp:/udp: prefix, says the protocol
        self.endpoint: Any = parse_endpoint(self.bind_text, "udp" if args.udp else None)
        if args.numeric and self.endpoint.kind == "inet":  # a unix path has no host
            require_numeric(bind_host(self.bind_text), for_connect=False)
        self.protocol: ProtocolName = self.endpoint.protocol
        self.label = transport_label(self.endpoint)
        self.families = address_families(args.ipv4, args.ipv6)
        self.keep: bool = args.keep
        self.max_clients: int = getattr(args, "max_clients", DEFAULT_MAX_CLIENTS)
        self.verbose: bool = args.verbose
        self.port_file: str | None = args.port_file
        check_eof_flags(args)
        self.policy = EofPolicy(args.close_on_eof, args.quit_after, not args.no_stdin)
        self.relay = RelayOptions(args.crlf, args.interval, args.wait)
        if args.handler and (args.crlf or args.interval or args.wait):
            raise UsageError("-C, -i and -w shape the stdio relay; a handler takes --set "
                             "options instead (idle_timeout_s=SECS for -w)")  # fmt: skip
        self.tls: bool = getattr(args, "tls", False)  # portd.shell.tls, imported only then
        self.tls_files: tuple[str | None, str | None] = (
            getattr(args, "cert", None), getattr(args, "key", None))  # fmt: skip
        self.gate: Any = None
        if args.set and args.keep and not args.handler:
            from portd.shell.admission import stdio_gate

            self.gate = stdio_gate(args.set, self.endpoint.kind)


def check_eof_flags(args: Any) -> None:
    """-N (half-close, the default) and --close-on-eof ask for opposite ends.

    Raises:
        UsageError: both were given.
    """
    if args.half_close and args.close_on_eof:
        raise UsageError("-N half-closes when stdin ends, --close-on-eof closes: give one")


def transport_label(endpoint: Any) -> str:
    """What the shell's lines call the socket: ``tcp``/``udp`` for IP, ``stream`` or
    ``datagram`` for a unix socket (which is neither TCP nor UDP, whatever the config
    file's ``protocol`` key calls it)."""
    if endpoint.kind == "unix":
        return "stream" if endpoint.protocol == "tcp" else "datagram"
    return str(endpoint.protocol)


def address_families(ipv4: bool, ipv6: bool) -> tuple[socket.AddressFamily, ...]:
    if ipv4 and not ipv6:
        return (socket.AF_INET,)
    if ipv6 and not ipv4:
        return (socket.AF_INET6,)
    return ()


def run_listen(options: ListenOptions) -> int:
    """Serve stdin/stdout over the socket(s); return the exit status."""
    exit_on_sigterm()
    listening = Listening.open(options.endpoint, options.families)
    sockets = listening.sockets
    bridge: Any = None
    try:
        listening.announce(options.label, options.port_file)
        context = tls_context(options, sockets) if options.tls else None
        if options.protocol == "udp":
            return _relay_datagrams(sockets, options)
        if options.keep:
            return _serve_many(sockets, options, context)
        if context is not None:
            from portd.shell.tls import accept_tls

            accept = lambda: _accept_one(sockets, options.endpoint)  # noqa: E731
            conn, peer, bridge = accept_tls(accept, context)
        else:
            conn, peer = _accept_one(sockets, options.endpoint)
    finally:
        listening.close()  # like nc -l: one connection, no further listening
    with conn:
        status = _relay_stream(conn, str(peer), options, bridge)
    if bridge is not None:
        from portd.shell.tls import finish

        status = finish(bridge, status, str(peer))
    return status


def tls_context(options: ListenOptions, sockets: list[socket.socket]) -> Any:
    """--tls: the server context (--cert/--key, or an ephemeral certificate for the
    bound addresses)."""
    from portd.shell.tls import listen_context

    addresses = options.endpoint.bound_addresses(sockets)
    return listen_context(*options.tls_files, [getattr(a, "host", "") for a in addresses])


def exit_on_sigterm() -> None:
    """SIGTERM ends portd as Ctrl-C does (exit 143), so its cleanup runs: a unix
    socket's file is removed, not left for the next start to find stale."""

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def _accept_one(sockets: list[socket.socket], endpoint: Any) -> tuple[socket.socket, Any]:
    """The next connection and its typed peer (``str()`` names it as logs do).

    The peer comes from accept(): getpeername() fails (ENOTCONN) on a connection the
    client reset while it waited in the backlog, and such a connection is still returned.
    """
    while True:
        # In slices, as wait_in_main waits: a Ctrl-C on the main thread's way into
        # select() still ends it (-k's accept thread, which blocks signals, just wakes).
        readable, _, _ = select.select(sockets, [], [], SIGNAL_CHECK_S)
        for sock in readable:
            try:
                conn, address = sock.accept()
            except (BlockingIOError, ConnectionAbortedError):
                continue
            conn.setblocking(True)
            try:
                return conn, endpoint.peer(conn, address)
            except OSError:  # reset before we asked who it was (unix credentials)
                conn.close()


def _relay_stream(conn: socket.socket, peer: str, options: ListenOptions, bridge: Any) -> int:
    if options.verbose:
        print(f"connection from {peer}", file=sys.stderr, flush=True)
        if bridge is not None:
            print(f"tls: {bridge.describe()}", file=sys.stderr, flush=True)
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
    DatagramRelay(sockets, session, options.endpoint, options.verbose).run()
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
        self.tls_context: Any = None  # --tls: each client's handshake runs in its own thread

    def accept_forever(self, sockets: list[socket.socket]) -> None:
        """Accept and serve until the process ends (the sockets may close under us then).

        Out of descriptors, it waits and accepts again (clients wait in the backlog); a
        client it cannot serve is refused with an RST and a line, never dropped silently.
        """
        while True:
            try:
                conn, peer = _accept_one(sockets, self.options.endpoint)
            except (ValueError, OSError) as exc:
                if isinstance(exc, ValueError) or exc.errno == errno.EBADF:
                    return  # the sockets were closed: the process is ending
                self._report(f"portd: accept failed: {exc.strerror}; retrying", always=True)
                time.sleep(ACCEPT_RETRY_S)  # a back-off, not a readiness wait
                continue
            if self.tls_context is not None:
                start_thread(self._add_tls, conn, peer)
            else:
                self.add(conn, peer)

    def _add_tls(self, conn: socket.socket, client: Any) -> None:
        from portd.errors import TLSHandshakeError
        from portd.shell.tls import handshake

        try:
            bridge = handshake(conn, self.tls_context, server_side=True)
        except TLSHandshakeError as exc:
            conn.close()
            self._report(f"portd: TLS handshake with {client} failed: {exc}", always=True)
            return
        self._report(f"tls: {client}: {bridge.describe()}")
        self.add(bridge.start(), client)

    def add(self, conn: socket.socket, client: Any) -> None:
        """Serve a new client, or refuse it (RST and a line): at --max-clients, when a
        --set limit says no, or when no thread can be started for it."""
        peer, gate = str(client), self.options.gate
        with self.lock:
            if len(self.clients) >= self.options.max_clients:
                reason: str | None = f"{self.options.max_clients} clients already (--max-clients)"
            else:
                reason = gate.admit(client) if gate is not None else None
            if reason is None:
                self.clients.add(conn)
        if reason is not None:
            self._refuse(conn, peer, reason)
            return
        try:
            start_thread(self._pump, conn, client)
        except RuntimeError:  # can't start new thread: RLIMIT_NPROC, cgroup pids.max
            with self.lock:
                self.clients.discard(conn)
            if gate is not None:
                gate.release(client)
            self._refuse(conn, peer, "no thread could be started for it (a thread limit?)")
            return
        with self.lock:  # only now: a refused client must read a reset, not this EOF
            if self.stdin_done:
                _half_close(conn)

    def _refuse(self, conn: socket.socket, peer: str, why: str) -> None:
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        conn.close()
        self._report(f"portd: refused {peer}: {why}", always=True)

    def _pump(self, conn: socket.socket, client: Any) -> None:
        peer = str(client)
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
                self.options.gate.release(client)
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

    def _report(self, line: str, always: bool = False) -> None:
        """-v (or ``always``): one line; print() writes text and newline separately, so
        threads take turns."""
        if self.options.verbose or always:
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


def _serve_many(sockets: list[socket.socket], options: ListenOptions, tls: Any = None) -> int:
    """-k: serve clients concurrently until interrupted or stdout fails (nc -lk takes
    them one at a time)."""
    clients = _Clients(options)
    clients.tls_context = tls
    if options.policy.read_stdin:
        start_thread(clients.broadcast_stdin)
    start_thread(clients.accept_forever, sockets)
    wait_in_main(clients.ended)
    if clients.message:
        print(f"portd: {clients.message}", file=sys.stderr)
    return clients.status
