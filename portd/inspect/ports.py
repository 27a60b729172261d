"""``portd ports``: every listening socket on this host, like ``ss -ltnup``.

psutil reads the kernel's tables; the owning process is visible for one's own sockets,
and for everyone's as root.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, NamedTuple

from portd.endpoints.base import ProtocolName
from portd.inspect.services import port_range, service_name


class ListeningSocket(NamedTuple):
    """One listening socket, with what is known of its owner."""

    protocol: ProtocolName
    address: str
    port: int
    service: str | None
    range: str
    pid: int | None
    program: str | None
    family: str


def listening_sockets(
    protocols: tuple[ProtocolName, ...], port: int | None = None
) -> list[ListeningSocket]:
    """Listening TCP sockets and bound, unconnected UDP sockets, sorted by port."""
    import psutil

    found: set[ListeningSocket] = set()
    names: dict[int, str | None] = {}
    kind = protocols[0] if len(protocols) == 1 else "inet"  # one pass over the kernel's tables
    for entry in psutil.net_connections(kind=kind):
        protocol: ProtocolName = "tcp" if entry.type == socket.SOCK_STREAM else "udp"
        if not entry.laddr or entry.raddr or protocol not in protocols:
            continue
        if protocol == "tcp" and entry.status != psutil.CONN_LISTEN:
            continue
        if port is not None and entry.laddr.port != port:
            continue
        program = _program(entry.pid, names) if entry.pid is not None else None
        number = entry.laddr.port
        family = "ipv6" if entry.family == socket.AF_INET6 else "ipv4"
        found.add(ListeningSocket(
            protocol, entry.laddr.ip, number, service_name(number, protocol),
            port_range(number), entry.pid, program, family,
        ))  # fmt: skip
    return sorted(found, key=lambda s: (s.port, s.protocol, s.family, s.address))


def _program(pid: int, names: dict[int, str | None]) -> str | None:
    import psutil

    if pid not in names:
        try:
            names[pid] = psutil.Process(pid).name()
        except psutil.Error:
            names[pid] = None
    return names[pid]


def run_ports(protocols: tuple[ProtocolName, ...], port: int | None, as_json: bool) -> int:
    """Print the table (or JSON); say when some owners are hidden."""
    rows = listening_sockets(protocols, port)
    if as_json:
        print(json.dumps([row._asdict() for row in rows]))
        return 0
    _print_table(rows)
    if any(row.pid is None for row in rows):
        hidden = sum(1 for row in rows if row.pid is None)
        why = (
            "they belong to processes in other namespaces"
            if os.geteuid() == 0
            else "run as root to see every process"
        )
        print(f"portd: the owner of {hidden} socket(s) is not visible: {why}", file=sys.stderr)
    return 0


def _print_table(rows: list[ListeningSocket]) -> None:
    table: list[tuple[Any, ...]] = [
        ("PROTO", "ADDRESS", "PORT", "SERVICE", "RANGE", "PID", "PROGRAM")
    ]
    for row in rows:
        address = f"[{row.address}]" if ":" in row.address else row.address
        table.append((row.protocol, address, row.port, row.service or "-", row.range,
                      row.pid if row.pid is not None else "-", row.program or "-"))  # fmt: skip
    widths = [max(len(str(line[i])) for line in table) for i in range(len(table[0]))]
    for line in table:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)
            ).rstrip()
        )
