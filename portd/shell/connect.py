"""``portd connect HOST PORT``: the client side of ``listen`` (``nc HOST PORT``), with nc's
``HOST:PORT``, ``-s ADDR``/``-p PORT`` (source), ``-n``, ``-w`` and ``-z``; a unix socket
(``-U PATH``, ``unix:PATH``) is portd.shell.unixconnect's."""

from __future__ import annotations

import socket
import sys
from typing import Any

from portd.endpoints.base import ProtocolName
from portd.endpoints.inet import format_host_port, parse_port
from portd.errors import ConnectError, HostNotFoundError, UsageError
from portd.shell.listen import address_families, check_eof_flags, report_session
from portd.shell.ncargs import connect_target, require_numeric, unix_target
from portd.shell.relay import DatagramRelay, EofPolicy, RelayOptions, Session, StreamRelay
from portd.shell.stats import Transfer

CONNECT_TIMEOUT_S = 10.0  # without -w; nc has none but the kernel's (minutes)
__all__ = ["ConnectError", "run_connect"]


def run_connect(args: Any) -> int:
    """Connect, relay stdin/stdout (or with -z only connect), and return the exit status.

    Raises:
        ConnectError: refused, timed out, or the source address could not be bound (exit 1).
        HostNotFoundError: the host does not resolve, or -n and it is a name (exit 1).
        UsageError, BindSyntaxError: words that are not HOST PORT, a bad port (exit 64).
    """
    path = unix_target(args.target, args.unix)
    if path is not None:
        from portd.shell.unixconnect import run_unix_connect

        return run_unix_connect(args, path)
    protocol: ProtocolName = "udp" if args.udp else "tcp"
    host, port_text = connect_target(args.target)
    if args.numeric:
        require_numeric(host, for_connect=True)
    check_eof_flags(args)
    if args.zero_io:
        return _check_ports(args, host, port_text, protocol)
    port = parse_port(port_text, protocol)
    target = format_host_port(host, port)
    context: Any = None
    if getattr(args, "tls", False):  # files are loaded (78) before anything connects
        from portd.shell.tls import connect_context, connect_tls

        context = connect_context(args)
    sock = open_connection(args, host, port, protocol)
    bridge: Any = None
    if context is not None:
        sock, bridge = connect_tls(sock, context, args.servername or host, target)
    transfer = Transfer(args.verbose)
    policy = EofPolicy(args.close_on_eof, args.quit_after, not args.no_stdin)
    session = Session(transfer, policy, RelayOptions(args.crlf, args.interval, args.wait))
    with sock:
        if args.verbose:
            print(f"connected to {target} ({protocol})", file=sys.stderr, flush=True)
            if bridge is not None:
                print(f"tls: {bridge.describe()}", file=sys.stderr, flush=True)
        if protocol == "tcp":
            StreamRelay(sock, session).run()
        else:
            DatagramRelay([sock], session).run()
    transfer.finish()
    status = report_session(session, target, args.verbose, side="to")
    if bridge is not None:
        from portd.shell.tls import finish

        status = finish(bridge, status, target)
    return status


def _check_ports(args: Any, host: str, ports: str, protocol: ProtocolName) -> int:
    """-z: connect to each port and close at once; 0 when one accepted, as nc."""
    if protocol == "udp":
        raise UsageError(
            "-z with -u: UDP has no handshake, so portd cannot tell an open port from a "
            "filtered one (nc guesses); send a datagram with portd connect -u and read the answer"
        )
    from portd.inspect.scan import parse_ports

    status = 1
    for port in parse_ports(ports):
        target = format_host_port(host, port)
        try:
            open_connection(args, host, port, protocol).close()
        except ConnectError as exc:
            if args.verbose:
                print(f"portd: {exc}", file=sys.stderr, flush=True)
            continue
        status = 0
        if args.verbose:
            print(f"connection to {target} ({protocol}) succeeded", file=sys.stderr, flush=True)
    return status


def open_connection(args: Any, host: str, port: int, protocol: ProtocolName) -> socket.socket:
    """A socket connected to ``host``:``port``, bound first to -s/-p when given; each
    address the host resolves to is tried in the resolver's order until one connects.

    Raises:
        HostNotFoundError: ``host`` does not resolve.
        ConnectError: no address connected (the message names each one and how it
            failed), or the source could not be bound.
    """
    import time

    from portd.endpoints.inet import InetAddress
    from portd.inspect.probe import Attempt, attempt_error

    families = address_families(args.ipv4, args.ipv6) or (socket.AF_UNSPEC,)
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    timeout_s = args.wait or CONNECT_TIMEOUT_S
    attempts: list[Attempt] = []
    for family in families:
        for info_family, info_kind, proto, _name, address in _resolve(host, port, family, kind):
            sock = socket.socket(info_family, info_kind, proto)
            begun = time.monotonic()
            try:
                _bind_source(sock, args, info_family, kind)
                sock.settimeout(timeout_s)
                sock.connect(address)
                error = 0
            except ConnectError:
                sock.close()
                raise
            except OSError as exc:
                error = attempt_error(exc)
                sock.close()
            where = InetAddress(info_family, address)
            attempt = Attempt(where, error, time.monotonic() - begun)
            attempts.append(attempt)
            if args.verbose:
                print(f"trying {attempt.target}: {attempt.describe(timed=True)}", file=sys.stderr)
            if attempt.ok:
                sock.settimeout(None)
                return sock
    target = format_host_port(host, port)
    failures = _failures(host, attempts, timeout_s)
    raise ConnectError(f"connect to {target} ({protocol}) failed: {failures}")


def _resolve(host: str, port: int, family: int, kind: int) -> list[Any]:
    try:
        return socket.getaddrinfo(host, port, family, kind)
    except socket.gaierror as exc:
        raise HostNotFoundError(f"cannot resolve {host!r}: {exc.strerror}") from None
    except UnicodeError:  # bytes that are not UTF-8 (surrogates), or a bad IDNA label
        raise HostNotFoundError(f"cannot resolve {host!r}: not a valid host name") from None


def _bind_source(sock: socket.socket, args: Any, family: int, kind: int) -> None:
    """-s ADDR / -p PORT: the connection's own address, as nc binds it (no SO_REUSEADDR).

    Raises:
        ConnectError: the source does not resolve in this family or cannot be bound.
    """
    if args.source is None and args.source_port is None:
        return
    if args.numeric and args.source is not None:
        require_numeric(args.source, for_connect=True)
    where = format_host_port(args.source or "*", args.source_port or 0)
    try:
        infos = socket.getaddrinfo(
            args.source, args.source_port or 0, family, kind, 0, socket.AI_PASSIVE
        )
        sock.bind(infos[0][4])
    except socket.gaierror as exc:
        raise ConnectError(f"source {where}: {exc.strerror}") from None
    except OSError as exc:
        raise ConnectError(f"cannot bind source {where}: {exc.strerror or exc}") from None


def _failures(host: str, attempts: list[Any], timeout_s: float) -> str:
    """One address: its outcome and what usually causes it; several: each one's outcome."""
    from portd.inspect.probe import HINTS

    if not attempts:
        return "no address"

    def outcome(attempt: Any) -> str:
        if attempt.outcome == "timeout":
            return f"timed out after {timeout_s:g} s"
        return str(attempt.describe())

    if len(attempts) == 1 and attempts[0].target.host == host:
        hint = HINTS.get(attempts[0].outcome)
        return outcome(attempts[0]) + (f": {hint}" if hint else "")
    return ", ".join(f"{attempt.target} {outcome(attempt)}" for attempt in attempts)
