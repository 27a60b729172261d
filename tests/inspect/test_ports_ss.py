"""`portd ports` against `ss` in a network namespace of the test's own: every row of
``portd ports -a`` (and of the default listing, and of ``-x``) is a row of ss's, and
the reverse, with the same state, queues, addresses and holding processes.

Inside the namespace the only sockets are the ones this test made, so the two listings
are complete and stable: listeners (v4, v6-only, dual-stack, a full accept queue, a
SO_REUSEPORT pair), connections in ESTAB, CLOSE-WAIT, FIN-WAIT-2 and TIME-WAIT, UDP
bound and connected, and unix sockets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from portd.inspect.ports import show_address
from tests.netns import Netns, netns
from tests.support import require_tool

__all__ = ["netns"]

PROCESS = re.compile(r'\("[^"]*",pid=(\d+),fd=(\d+)\)')
STEPS: list[dict[str, Any]] = [
    {"op": "bind", "host": "127.0.0.1", "port": 8080, "backlog": 5, "name": "web"},
    {"op": "bind", "host": "::1", "port": 8080, "backlog": 7},
    {"op": "bind", "host": "::", "port": 8081, "v6only": False},
    {"op": "bind", "host": "127.0.0.1", "port": 8082, "backlog": 1, "name": "full"},
    {"op": "connect", "host": "127.0.0.1", "port": 8082},
    {"op": "connect", "host": "127.0.0.1", "port": 8082},
    {"op": "bind", "host": "0.0.0.0", "port": 8083, "reuseport": True},
    {"op": "bind", "host": "0.0.0.0", "port": 8083, "reuseport": True},
    {"op": "connect", "host": "127.0.0.1", "port": 8080, "name": "open"},
    {"op": "accept", "name": "web", "as": "served"},
    {"op": "connect", "host": "127.0.0.1", "port": 8080, "name": "half"},
    {"op": "accept", "name": "web", "as": "half-served"},
    {"op": "close", "name": "half"},
    {"op": "connect", "host": "127.0.0.1", "port": 8080, "name": "done"},
    {"op": "accept", "name": "web", "as": "done-served"},
    {"op": "close", "name": "done"},
    {"op": "close", "name": "done-served"},
    {"op": "connect", "host": "127.0.0.1", "port": 8081, "name": "mapped"},
    {"op": "bind", "proto": "udp", "host": "127.0.0.1", "port": 5353, "name": "dns"},
    {"op": "bind", "proto": "udp", "host": "::", "port": 5354, "v6only": False},
    {"op": "connect", "proto": "udp", "host": "127.0.0.1", "port": 5353},
]


def ss_rows(text: str) -> list[tuple[Any, ...]]:
    """``ss -tanpH``-style lines -> (state, recv_q, send_q, local, peer, holders)."""
    rows = []
    for line in text.splitlines():
        state, recv_q, send_q, local, peer, *process = line.split(maxsplit=5)
        holders = frozenset(PROCESS.findall(process[0])) if process else frozenset()
        rows.append((state, int(recv_q), int(send_q), local, peer, holders))
    return sorted(rows, key=repr)


def no_peer(row: dict[str, Any]) -> str:
    """How ss writes the peer of a listener: the wildcard of the socket's family."""
    if row["family"] == "ipv4":
        return "0.0.0.0:*"
    return "*:*" if row["v6only"] is False else "[::]:*"


def portd_rows(listed: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The same tuple from ``portd ports --json`` rows, written as ss writes addresses."""
    rows = []
    for row in listed:
        local = f"{show_address(row['address'], row['v6only'])}:{row['port']}"
        if row["peer_address"] is None:
            peer = no_peer(row)
        else:
            peer = f"{show_address(row['peer_address'], None)}:{row['peer_port']}"
        holders = frozenset((str(pid), str(fd)) for pid, fd, _name in row["holders"])
        rows.append((row["state"], row["recv_q"], row["send_q"], local, peer, holders))
    return sorted(rows, key=repr)


@pytest.fixture
def sockets(netns: Netns) -> Netns:
    netns.hold(*STEPS)
    return netns


def ports_json(netns: Netns, *args: str) -> list[dict[str, Any]]:
    done = netns.portd("ports", "--json", *args)
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, Any]] = json.loads(done.stdout)
    return listed


def test_all_tcp_states_match_ss_tanp_row_by_row(sockets: Netns) -> None:
    ss = ss_rows(sockets.run(require_tool("ss"), "-tanpH").stdout)
    assert {row[0] for row in ss} >= {"LISTEN", "ESTAB", "CLOSE-WAIT", "FIN-WAIT-2", "TIME-WAIT"}
    assert portd_rows(ports_json(sockets, "-a", "--tcp")) == ss


def test_all_udp_sockets_match_ss_uanp(sockets: Netns) -> None:
    ss = ss_rows(sockets.run(require_tool("ss"), "-uanpH").stdout)
    assert {row[0] for row in ss} == {"UNCONN", "ESTAB"}
    assert portd_rows(ports_json(sockets, "-a", "--udp")) == ss


def test_listeners_match_ss_ltunp(sockets: Netns) -> None:
    ss = ss_rows(sockets.run(require_tool("ss"), "-ltnpH").stdout)
    ss += ss_rows(sockets.run(require_tool("ss"), "-lunpH").stdout)
    assert portd_rows(ports_json(sockets)) == sorted(ss, key=repr)


def test_the_all_states_table_shows_what_ss_shows(sockets: Netns) -> None:
    """The text table, cell by cell: state, local address and port, peer, pid."""
    table = sockets.portd("ports", "-a", "--tcp")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["PROTO", "STATE", "ADDRESS", "PORT", "PEER", "SERVICE", "RANGE",
                                "PID", "PROGRAM", "USER"]  # fmt: skip
    shown = sorted(
        (cells[1], f"{cells[2]}:{cells[3]}", cells[4], cells[7])
        for cells in (line.split() for line in lines[1:])
    )
    expected = sorted(
        (state, local, peer.replace("0.0.0.0:*", "*").replace("[::]:*", "*").replace("*:*", "*"),
         min((pid for pid, _fd in holders), key=int, default="-"))
        for state, _r, _s, local, peer, holders in ss_rows(sockets.run("ss", "-tanpH").stdout)
    )  # fmt: skip
    assert shown == expected


def test_unix_listeners_match_ss_lxp(netns: Netns, tmp_path: Path) -> None:
    netns.hold(
        {"op": "bind", "proto": "unix", "host": str(tmp_path / "app.sock"), "backlog": 3},
        {"op": "bind", "proto": "unix", "host": "\0portd-test-abstract"},
        {"op": "bind", "proto": "unix-dgram", "host": str(tmp_path / "log.sock")},
    )
    listed = [row for row in ports_json(netns, "-x") if row["pid"] is not None]
    ours = [row for row in listed if str(tmp_path) in row["path"] or "portd-test" in row["path"]]
    assert sorted((r["kind"], r["state"], r["path"], r["send_q"], r["user"]) for r in ours) == [
        ("dgram", "UNCONN", str(tmp_path / "log.sock"), 0, "root"),
        ("stream", "LISTEN", str(tmp_path / "app.sock"), 3, "root"),
        ("stream", "LISTEN", "@portd-test-abstract", 128, "root"),
    ]
    ss = {
        (fields[0], fields[1], fields[4], fields[5])
        for fields in (line.split() for line in netns.run("ss", "-lxpH").stdout.splitlines())
    }
    netids = {"stream": "u_str", "dgram": "u_dgr"}
    assert {(netids[r["kind"]], r["state"], r["path"] or "*", str(r["inode"])) for r in ours} <= ss
    assert all(row["holders"] == [[row["pid"], row["holders"][0][1], row["program"]]]
               for row in ours)  # fmt: skip
