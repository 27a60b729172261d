"""``portd connect HOST PORT``: the client side of ``listen`` (``nc HOST PORT``)."""

from __future__ import annotations

import socket
import sys
from typing import Any

from portd.binds import Protocol, format_host_port, parse_port
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
    protocol: Protocol = "udp" if args.udp else "tcp"
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


def _open(args: Any, protocol: Protocol, port: int, target: str) -> socket.socket:
    families = address_families(args.ipv4, args.ipv6) or (socket.AF_UNSPEC,)
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    errors: list[str] = []
    for family in families:
        try:
            infos = socket.getaddrinfo(args.host, port, family, kind)
        except socket.gaierror as exc:
            raise HostNotFoundError(f"cannot resolve {args.host!r}: {exc.strerror}") from None
        for info_family, info_kind, proto, _name, address in infos:
            sock = socket.socket(info_family, info_kind, proto)
            sock.settimeout(args.wait)
            try:
                sock.connect(address)
            except TimeoutError:
                errors.append("timed out")
            except OSError as exc:
                errors.append(exc.strerror or str(exc))
            else:
                sock.settimeout(None)
                return sock
            sock.close()
    reason = errors[-1] if errors else "no address"
    raise ConnectError(f"connect to {target} ({protocol}) failed: {reason.lower()}")
