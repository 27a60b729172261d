"""``portd connect -U PATH`` (or ``unix:PATH``, ``unix:@NAME``): the client side of a
unix-domain socket, stream or, with ``-u``, datagram.

A datagram client needs an address of its own, or replies cannot reach it: portd binds
``client.sock`` in a fresh private directory (as Debian's ``nc -uU`` does), or the path
``-s`` names, and removes what it made when the session ends. Once the socket is
connected to the server, the kernel lets no other socket send to it, so only then are
the file and its directory opened to other users: a server running as another user
(a daemon that dropped root) can answer, and nobody else can inject a datagram.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
from typing import Any

from portd.endpoints.parse import parse_endpoint
from portd.errors import ConnectError, UsageError
from portd.shell.listen import check_eof_flags, report_session, transport_label
from portd.shell.relay import DatagramRelay, EofPolicy, RelayOptions, Session, StreamRelay
from portd.shell.stats import Transfer

CONNECT_TIMEOUT_S = 10.0  # as for IP: without -w
CLIENT_NAME = "client.sock"
OPEN_DIRECTORY_MODE = 0o711  # others may reach the socket inside, not list the directory
OPEN_SOCKET_MODE = 0o666
CONNECT_REASONS = {
    errno.ENOENT: "no such socket (nothing was ever bound there, or its server removed it)",
    errno.ECONNREFUSED: "connection refused: nothing accepts on it (left by a server that ended?)",
    errno.EACCES: "permission denied (writing to the socket file, or searching its directory)",
    errno.EAGAIN: "its accept queue is full (the server does not accept fast enough)",
}


def run_unix_connect(args: Any, path: str) -> int:
    """Connect to the unix socket at ``path``, relay stdin/stdout (-z: only connect).

    Raises:
        ConnectError: no socket there, refused, the wrong type, or the client's own path
            could not be bound (exit 1).
        UsageError, BindSyntaxError: a flag that applies to IP only, a bad path (64).
    """
    refuse_ip_flags(args)
    check_eof_flags(args)
    endpoint = parse_endpoint("unix:" + path, "udp" if args.udp else "tcp")
    (address,) = endpoint.resolve()
    label = f"{endpoint} ({transport_label(endpoint)})"
    own = ClientPath(args.source) if args.udp or args.source else None
    try:
        sock = open_unix(address.sockaddr, endpoint.protocol, args.wait, own, label)
        with sock:
            if args.zero_io:
                if args.verbose:
                    print(f"connection to {label} succeeded", file=sys.stderr, flush=True)
                return 0
            return _relay(sock, endpoint, args, label, own)
    except ConnectError as exc:
        if args.zero_io and not args.verbose:
            return 1  # -z: the status says it, as for a port that does not accept
        raise exc from None
    finally:
        if own is not None:
            own.remove()


def refuse_ip_flags(args: Any) -> None:
    """-p, -4 and -6 name IP ports and families; -z -u has nothing to check.

    Raises:
        UsageError: one of them was given.
    """
    if args.source_port is not None:
        raise UsageError("-p PORT: a unix socket has no port (-s PATH binds the client's own)")
    if args.ipv4 or args.ipv6:
        raise UsageError("-4/-6 apply to IP addresses, not unix sockets")
    if args.zero_io and args.udp:
        raise UsageError(
            "-z with -u: a datagram socket has no handshake to check; "
            "send a datagram with portd connect -uU and read the answer"
        )


def _relay(sock: socket.socket, endpoint: Any, args: Any, label: str, own: Any) -> int:
    if args.verbose:
        if endpoint.protocol == "tcp":
            who = f", served by {endpoint.peer(sock, None)}"
        else:
            who = f" from {own.path}" if own is not None else ""
        print(f"connected to {label}{who}", file=sys.stderr, flush=True)
    transfer = Transfer(args.verbose)
    policy = EofPolicy(args.close_on_eof, args.quit_after, not args.no_stdin)
    session = Session(transfer, policy, RelayOptions(args.crlf, args.interval, args.wait))
    if endpoint.protocol == "tcp":
        StreamRelay(sock, session).run()
    else:
        DatagramRelay([sock], session).run()
    transfer.finish()
    return report_session(session, str(endpoint), args.verbose, side="to")


def open_unix(
    sockaddr: str, protocol: str, wait_s: float | None, own: ClientPath | None, label: str
) -> socket.socket:
    """A unix socket connected to ``sockaddr`` (bound first to ``own``, if given).

    Raises:
        ConnectError: naming why, in words that say what to do.
    """
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        if own is not None:
            own.bind(sock)
        sock.settimeout(wait_s or CONNECT_TIMEOUT_S)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            reason = _reason(exc, sockaddr, protocol, wait_s or CONNECT_TIMEOUT_S)
            raise ConnectError(f"connect to {label} failed: {reason}") from None
        sock.settimeout(None)
        if own is not None:
            own.open_to_the_server()
    except BaseException:
        sock.close()
        raise
    return sock


def _reason(exc: OSError, sockaddr: str, protocol: str, timeout_s: float) -> str:
    """What a failed connect() means for a unix socket."""
    if exc.errno == errno.EPROTOTYPE:
        other = (
            "a stream socket: leave out -u" if protocol == "udp" else "a datagram socket: add -u"
        )
        return f"it is {other}"
    refused = exc.errno == errno.ECONNREFUSED
    if refused and not sockaddr.startswith("\0") and not _is_socket(sockaddr):
        return "it is not a socket"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s (its accept queue is full)"
    return CONNECT_REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)  # noqa: PTH116
    except OSError:
        return False


class ClientPath:
    """The client's own address: ``-s PATH``, or a fresh private directory's
    ``client.sock``; what portd made is removed by ``remove()``."""

    def __init__(self, given: str | None) -> None:
        self.given = given
        self.directory: str | None = None
        self.path = given or ""
        self.bound = False

    def bind(self, sock: socket.socket) -> None:
        """Bind ``sock`` here (the private directory is made now).

        Raises:
            ConnectError: the path cannot be bound (it exists, a directory is missing).
        """
        if self.given is None:
            import tempfile

            self.directory = tempfile.mkdtemp(prefix="portd-")  # 0700: ours alone for now
            self.path = os.path.join(self.directory, CLIENT_NAME)  # noqa: PTH118
        (address,) = parse_endpoint("unix:" + self.path).resolve()
        try:
            sock.bind(address.sockaddr)
        except OSError as exc:
            raise ConnectError(
                f"cannot bind the client's socket {self.path}: {exc.strerror}"
            ) from None
        self.bound = not address.is_abstract

    def open_to_the_server(self) -> None:
        """Connected: only the server can send here now, whoever it runs as."""
        if self.directory is None:
            return
        with contextlib.suppress(OSError):
            os.chmod(self.path, OPEN_SOCKET_MODE)  # noqa: PTH101
            os.chmod(self.directory, OPEN_DIRECTORY_MODE)  # noqa: PTH101

    def remove(self) -> None:
        """Remove the socket file portd bound and the directory it made."""
        if self.bound:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # noqa: PTH108
        if self.directory is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self.directory)  # noqa: PTH106
