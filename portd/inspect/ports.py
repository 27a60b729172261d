"""``portd ports``: the sockets of this host, like ``ss -ltnup`` (``-a``: ``ss -tuanp``,
``-x``: ``ss -lxp``), with service names, ranges, owners and a JSON form of each.

The kernel's tables come from sock_diag (sockdiag.py), the same source ss reads, so the
rows match ss's one for one; owners come from one pass over /proc (holders.py). A
socket's user is always known (the kernel records it); its process only for one's own
sockets, or everyone's as root.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from portd.endpoints.base import ProtocolName
from portd.errors import NotPermittedError, ProcessNotFoundError
from portd.inspect.holders import Holders, process_uid, user_name
from portd.inspect.services import port_range, service_name
from portd.inspect.sockdiag import (
    ALL_STATES,
    LISTEN_STATES,
    InetSocket,
    UnixSocket,
    inet_sockets,
    unix_sockets,
)

UNIX_NETIDS = {"stream": "u_str", "dgram": "u_dgr", "seqpacket": "u_seq"}


class PortsQuery(NamedTuple):
    """What ``portd ports`` was asked to show."""

    protocols: tuple[ProtocolName, ...] = ("tcp", "udp")
    port: int | None = None
    pid: int | None = None
    all_states: bool = False
    unix: bool = False
    as_json: bool = False


class SocketRow(NamedTuple):
    """One TCP or UDP socket, with what is known of its owner (``--json``'s row)."""

    protocol: ProtocolName
    address: str
    port: int
    service: str | None
    range: str
    pid: int | None
    program: str | None
    family: str
    state: str
    peer_address: str | None
    peer_port: int | None
    recv_q: int
    send_q: int | None
    v6only: bool | None
    user: str | None
    uid: int
    inode: int
    holders: tuple[tuple[int, int, str], ...]


def socket_rows(query: PortsQuery) -> list[SocketRow]:
    """The TCP/UDP rows ``query`` selects, sorted by port, protocol, family, address, peer.

    Raises:
        DiagnosisError: the kernel's tables cannot be read.
    """
    kernel = [
        entry
        for entry in inet_sockets(
            query.protocols, ALL_STATES if query.all_states else LISTEN_STATES
        )
        if (query.all_states or entry.listening)
        and (query.port is None or entry.port == query.port)
    ]
    holders = _holders({entry.inode for entry in kernel if entry.inode}, query.pid)
    rows = [_inet_row(entry, holders) for entry in kernel]
    if query.pid is not None:
        rows = [row for row in rows if any(h[0] == query.pid for h in row.holders)]
    return sorted(rows, key=_order)


def _holders(inodes: set[int], pid: int | None) -> Holders:
    return Holders(inodes) if pid is None else Holders(pids=[pid])


def _order(row: SocketRow) -> tuple[Any, ...]:
    return (row.port, row.protocol, row.family, row.address, row.state,
            row.peer_address or "", row.peer_port or 0, row.pid or 0)  # fmt: skip


def _inet_row(entry: InetSocket, holders: Holders) -> SocketRow:
    held = holders.of(entry.inode) if entry.inode else []
    connected = entry.state not in ("LISTEN", "UNCONN")
    return SocketRow(
        entry.protocol, entry.address, entry.port, service_name(entry.port, entry.protocol),
        port_range(entry.port), held[0].pid if held else None, held[0].program if held else None,
        "ipv6" if entry.family == socket.AF_INET6 else "ipv4", entry.state,
        entry.peer_address if connected else None, entry.peer_port if connected else None,
        entry.recv_q, entry.send_q, entry.v6only, user_name(entry.uid), entry.uid, entry.inode,
        tuple((h.pid, h.fd, h.program) for h in held),
    )  # fmt: skip


def unix_rows(query: PortsQuery) -> list[dict[str, Any]]:
    """The unix-domain sockets ``query`` selects (listening ones unless ``all_states``)."""
    kernel = unix_sockets(ALL_STATES if query.all_states else LISTEN_STATES)
    if not query.all_states:  # ss -lx: listeners, and bound datagram sockets
        kernel = [e for e in kernel if e.state == "LISTEN" or (e.state == "UNCONN" and e.path)]
    holders = _holders({e.inode for e in kernel}, query.pid)
    rows = [_unix_row(entry, holders) for entry in kernel]
    if query.pid is not None:
        rows = [row for row in rows if any(h[0] == query.pid for h in row["holders"])]
    return sorted(rows, key=lambda r: (r["path"] or "\x7f", r["kind"], r["inode"]))


def _unix_row(entry: UnixSocket, holders: Holders) -> dict[str, Any]:
    held = holders.of(entry.inode)
    uid = entry.uid if entry.uid is not None else (process_uid(held[0].pid) if held else None)
    return {
        "protocol": "unix", "kind": entry.kind, "state": entry.state, "path": entry.path,
        "inode": entry.inode, "peer_inode": entry.peer_inode or None,
        "recv_q": entry.recv_q, "send_q": entry.send_q,
        "pid": held[0].pid if held else None, "program": held[0].program if held else None,
        "user": user_name(uid), "uid": uid,
        "holders": [[h.pid, h.fd, h.program] for h in held],
    }  # fmt: skip


def run_ports(query: PortsQuery) -> int:
    """Print the table (or JSON); say on stderr when some owners are hidden.

    Raises:
        ProcessNotFoundError: ``--pid`` names no process (exit 1).
        NotPermittedError: ``--pid`` names another user's process, without root (exit 77).
        DiagnosisError: the kernel's tables cannot be read (exit 69).
    """
    if query.pid is not None:
        _check_pid(query.pid)
    rows: Sequence[Any] = unix_rows(query) if query.unix else socket_rows(query)
    if query.as_json:
        print(json.dumps([row if query.unix else _json(row) for row in rows]))
    elif query.unix:
        _print_table(_unix_table(rows))
    else:
        _print_table(_inet_table(rows, query.all_states))
    hidden = sum(1 for row in rows if _hidden(row))
    if hidden and not query.as_json:
        why = (
            "they belong to processes in other namespaces"
            if os.geteuid() == 0
            else "run as root to see every process"
        )
        print(f"portd: the owner of {hidden} socket(s) is not visible: {why}", file=sys.stderr)
    return 0


def _hidden(row: SocketRow | dict[str, Any]) -> bool:
    """An owner exists (the socket has a file) but no visible process holds it."""
    if isinstance(row, dict):
        return row["pid"] is None
    return row.pid is None and row.inode != 0


def _check_pid(pid: int) -> None:
    if not os.path.isdir(f"/proc/{pid}"):  # noqa: PTH112 - no pathlib import for one check
        raise ProcessNotFoundError(f"no process has pid {pid}")
    if not os.access(f"/proc/{pid}/fd", os.R_OK | os.X_OK):
        raise NotPermittedError(
            f"the sockets of pid {pid} are not visible to {user_name(os.geteuid())}: "
            "run as root (or as its user)"
        )


def _json(row: SocketRow) -> dict[str, Any]:
    data = row._asdict()
    data["holders"] = [list(holder) for holder in row.holders]
    return data


def show_address(address: str, v6only: bool | None) -> str:
    """How ss writes a local address: ``*`` for a dual-stack ``::``, IPv6 in brackets."""
    if address == "::" and v6only is False:
        return "*"
    return f"[{address}]" if ":" in address else address


def _inet_table(rows: Sequence[SocketRow], all_states: bool) -> list[tuple[Any, ...]]:
    head: tuple[str, ...] = ("PROTO", "ADDRESS", "PORT", "SERVICE", "RANGE", "PID", "PROGRAM",
                             "USER")  # fmt: skip
    if all_states:
        head = ("PROTO", "STATE", "ADDRESS", "PORT", "PEER", *head[3:])
    table: list[tuple[Any, ...]] = [head]
    for row in rows:
        owner = (row.pid if row.pid is not None else "-", row.program or "-", row.user or "-")
        where: tuple[Any, ...] = (show_address(row.address, row.v6only), row.port)
        if all_states:
            peer = "*" if row.peer_address is None else _peer(row.peer_address, row.peer_port)
            where = (row.state, *where, peer)
        table.append((row.protocol, *where, row.service or "-", row.range, *owner))
    return table


def _peer(address: str, port: int | None) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _unix_table(rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    table: list[tuple[Any, ...]] = [("PROTO", "STATE", "PATH", "INODE", "PID", "PROGRAM", "USER")]
    for row in rows:
        table.append((UNIX_NETIDS.get(row["kind"], row["kind"]), row["state"], row["path"] or "*",
                      row["inode"], row["pid"] if row["pid"] is not None else "-",
                      row["program"] or "-", row["user"] or "-"))  # fmt: skip
    return table


def _print_table(table: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(line[i])) for line in table) for i in range(len(table[0]))]
    for line in table:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)
            ).rstrip()
        )
