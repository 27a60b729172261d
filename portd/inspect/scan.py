"""``portd scan HOST PORTS``: a TCP connect scan with bounded concurrency."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Sequence

from portd.endpoints.inet import MAX_PORT, InetAddress, parse_port
from portd.errors import BindSyntaxError, HostNotFoundError
from portd.inspect.probe import probe_tcp
from portd.inspect.services import service_name

MAX_PORTS_SPEC = 65536


def parse_ports(text: str) -> list[int]:
    """``22,80,8000-8100,http`` -> sorted unique ports.

    Raises:
        BindSyntaxError: a part is not a port, a service name or a LOW-HIGH range.
    """
    ports: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        low, dash, high = part.partition("-")
        if dash and low.isdigit() and high.isdigit():
            first, last = parse_port(low), parse_port(high)
            if first > last:
                raise BindSyntaxError(
                    f"bad port range {part!r}; expected LOW-HIGH with LOW <= HIGH"
                )
            ports.update(range(first, last + 1))
        elif part:
            ports.add(parse_port(part))
        else:
            raise BindSyntaxError(f"bad port list {text!r}; expected e.g. 22,80,8000-8100")
    ports.discard(0)
    if not ports:
        raise BindSyntaxError(f"no port to scan in {text!r} (ports are 1-{MAX_PORT})")
    return sorted(ports)


def resolve_host(host: str, families: Sequence[socket.AddressFamily]) -> InetAddress:
    """The first address of ``host`` (IPv4 first unless -6).

    Raises:
        HostNotFoundError: the name does not resolve (exit 1).
    """
    family = families[0] if len(families) == 1 else socket.AF_UNSPEC
    try:
        infos = socket.getaddrinfo(host, 0, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise HostNotFoundError(f"cannot resolve {host!r}: {exc.strerror}") from None
    except UnicodeError:  # bytes that are not UTF-8 (surrogates), or a bad IDNA label
        raise HostNotFoundError(f"cannot resolve {host!r}: not a valid host name") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    found_family, _type, _proto, _name, sockaddr = infos[0]
    return InetAddress(found_family, sockaddr)  # type: ignore[arg-type]


def run_scan(
    host: str,
    ports_text: str,
    *,
    timeout_s: float,
    concurrency: int,
    as_json: bool,
    families: Sequence[socket.AddressFamily] = (),
) -> int:
    """Scan and print the open ports; return 0 once the scan is complete."""
    ports = parse_ports(ports_text)
    address = resolve_host(host, families)
    targets = [
        InetAddress(address.family, (address.host, port, *address.sockaddr[2:])) for port in ports
    ]
    open_ports = sorted(
        attempt.target.port for attempt in probe_tcp(targets, timeout_s, concurrency) if attempt.ok
    )
    rows = [{"port": port, "protocol": "tcp", "state": "open",
             "service": service_name(port, "tcp")} for port in open_ports]  # fmt: skip
    if as_json:
        print(
            json.dumps({"host": host, "address": address.host, "scanned": len(ports), "open": rows})
        )
        return 0
    print(
        f"{len(open_ports)} of {len(ports)} ports open on {host} ({address.host})", file=sys.stderr
    )
    if rows:
        print(f"{'PORT':<10}SERVICE")
        for row in rows:
            print(f"{str(row['port']) + '/tcp':<10}{row['service'] or '-'}")
    return 0
