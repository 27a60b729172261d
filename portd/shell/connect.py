"""``portd connect HOST PORT``: the client side of ``listen`` (``nc HOST PORT``)."""

from __future__ import annotations

import socket
import sys
from typing import Any

from portd.endpoints.base import ProtocolName
from portd.endpoints.inet import format_host_port, parse_port
from portd.errors import ConnectError, HostNotFoundError
from portd.shell.listen import address_families, report_session
from portd.shell.relay import DatagramRelay, EofPolicy, Session, StreamRelay
from portd.shell.stats import Transfer


def run_connect(args: Any) -> int:
    """Connect, relay stdin/stdout, and return the exit status.

    Raises:
        ConnectError: refused, timed out or unresolvable (exit 1, one line).
        BindSyntaxError: a bad port or unknown service name (exit 64).
    """
    protocol: ProtocolName = "udp" if args.udp else "tcp"
    port = parse_port(args.port, protocol)
    target = format_host_port(args.host, port)
    sock = _open(args, protocol, port, target)
    transfer = Transfer(args.verbose)
    session = Session(transfer, EofPolicy(args.close_on_eof, args.quit_after, not args.no_stdin))
    with sock:
        if args.verbose:
            print(f"connected to {target} ({protocol})", file=sys.stderr, flush=True)
        if protocol == "tcp":
            StreamRelay(sock, session).run()
        else:
            DatagramRelay([sock], session, connected=True).run()
    transfer.finish()
    return report_session(session, target, args.verbose, side="to")


def _open(args: Any, protocol: ProtocolName, port: int, target: str) -> socket.socket:
    """Try each address the host resolves to (in the resolver's order) until one connects.

    Raises:
        HostNotFoundError: the host does not resolve.
        ConnectError: no address connected; the message names each one and how it failed.
    """
    import time

    from portd.endpoints.inet import InetAddress
    from portd.inspect.probe import Attempt, attempt_error

    families = address_families(args.ipv4, args.ipv6) or (socket.AF_UNSPEC,)
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    attempts: list[Attempt] = []
    for family in families:
        try:
            infos = socket.getaddrinfo(args.host, port, family, kind)
        except socket.gaierror as exc:
            raise HostNotFoundError(f"cannot resolve {args.host!r}: {exc.strerror}") from None
        except UnicodeError:  # bytes that are not UTF-8 (surrogates), or a bad IDNA label
            msg = f"cannot resolve {args.host!r}: not a valid host name"
            raise HostNotFoundError(msg) from None
        for info_family, info_kind, proto, _name, address in infos:
            sock = socket.socket(info_family, info_kind, proto)
            sock.settimeout(args.wait)
            begun = time.monotonic()
            try:
                sock.connect(address)
                error = 0
            except OSError as exc:
                error = attempt_error(exc)
                sock.close()
            where = InetAddress(info_family, address)  # type: ignore[arg-type]
            attempt = Attempt(where, error, time.monotonic() - begun)
            attempts.append(attempt)
            if args.verbose:
                print(f"trying {attempt.target}: {attempt.describe(timed=True)}", file=sys.stderr)
            if attempt.ok:
                sock.settimeout(None)
                return sock
    failures = _failures(args.host, attempts, args.wait)
    raise ConnectError(f"connect to {target} ({protocol}) failed: {failures}")


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
