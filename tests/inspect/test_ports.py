"""`portd ports` as a real process: it finds the listeners this test opened, with pid and
program, and its filters (--tcp, --udp, --port, --json) are exact.

Every check filters on a port this test holds, so other listeners on the host (and there
may be thousands while other suites run) never change the expected output.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from portd.inspect.services import port_range
from tests.conftest import HAS_IPV6, needs_ipv6
from tests.processes import NC_LISTENING, Spawner, tcp_client
from tests.support import PORTD, require_tool

HEADER = ["PROTO", "ADDRESS", "PORT", "SERVICE", "RANGE", "PID", "PROGRAM", "USER"]
ME = psutil.Process().name()
ME_USER = pwd.getpwuid(os.geteuid()).pw_name
# Every key of a `portd ports --json` row, and the ones the tests below compare.
ROW_KEYS = {
    "protocol", "address", "port", "service", "range", "pid", "program", "family", "state",
    "peer_address", "peer_port", "recv_q", "send_q", "v6only", "user", "uid", "inode", "holders",
}  # fmt: skip
COMPARED = ("protocol", "address", "port", "service", "range", "pid", "program", "family",
            "state", "user")  # fmt: skip


@pytest.fixture
def same_port() -> Iterator[int]:
    """One port number held for TCP (listening) and UDP on 127.0.0.1 and, with IPv6, ::1.

    Holding both loopbacks keeps other programs off this number in both families, so
    the listing for it is exactly these sockets.
    """
    hosts = [("127.0.0.1", socket.AF_INET)] + ([("::1", socket.AF_INET6)] if HAS_IPV6 else [])
    for _attempt in range(50):
        held: list[socket.socket] = []
        try:
            port = 0
            for host, family in hosts:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    sock = socket.socket(family, kind)
                    held.append(sock)
                    sock.bind((host, port))
                    port = sock.getsockname()[1]
                    if kind == socket.SOCK_STREAM:
                        sock.listen()
        except OSError:
            continue
        else:
            yield port
            return
        finally:
            for sock in held:
                sock.close()
    pytest.fail("no port number free for TCP and UDP on both loopbacks")


def service(port: int, protocol: str) -> str | None:
    try:
        return socket.getservbyport(port, protocol)
    except OSError:
        return None


def row(protocol: str, port: int, pid: int | None, program: str | None, *,
        address: str = "127.0.0.1", family: str = "ipv4") -> dict[str, Any]:  # fmt: skip
    """One entry of ``portd ports --json``."""
    return {
        "protocol": protocol, "address": address, "port": port,
        "service": service(port, protocol), "range": port_range(port),
        "pid": pid, "program": program, "family": family,
        "state": "LISTEN" if protocol == "tcp" else "UNCONN", "user": ME_USER,
    }  # fmt: skip


def ports_json(spawn: Spawner, *args: str) -> list[dict[str, Any]]:
    """``portd ports --json ARGS``, each row cut down to the COMPARED keys."""
    ports = spawn.portd("ports", "--json", *args)
    assert ports.wait() == 0, ports.stderr
    assert ports.lines == []
    result: list[dict[str, Any]] = json.loads(ports.output)
    assert all(set(entry) == ROW_KEYS for entry in result)
    return [{key: entry[key] for key in COMPARED} for entry in result]


def table_rows(spawn: Spawner, *args: str, prefix: Sequence[str] = PORTD) -> list[list[str]]:
    """``portd ports ARGS`` as a table, split into cells, after checking the header and
    that every column starts where its heading does."""
    table = spawn(*prefix, "ports", *args)
    assert table.wait() == 0, table.stderr
    lines = table.output.decode().splitlines()
    assert lines[0].split() == HEADER
    starts = [lines[0].index(name) for name in HEADER[1:]]
    for line in lines[1:]:
        assert [line[start - 2 : start] for start in starts] == ["  "] * 7, lines
        assert all(line[start] != " " for start in starts), lines
    return [line.split() for line in lines[1:]]


def test_finds_an_nc_tcp_listener_with_pid_and_program(spawn: Spawner) -> None:
    nc = spawn(require_tool("nc"), "-lvn", "127.0.0.1", "0")
    port = nc.port(NC_LISTENING)
    listed = ports_json(spawn, "--tcp", "--port", str(port))
    # nc holds 127.0.0.1 only: another program may have the same number on IPv6.
    assert [r for r in listed if r["family"] == "ipv4"] == [row("tcp", port, nc.proc.pid, "nc")]


def test_shows_an_nc_udp_listener_in_the_table(spawn: Spawner) -> None:
    nc = spawn(require_tool("nc"), "-luvn", "127.0.0.1", "0")
    port = nc.port(NC_LISTENING)
    rows = table_rows(spawn, "--udp", "--port", str(port))
    assert [r for r in rows if not r[1].startswith("[")] == [
        ["udp", "127.0.0.1", str(port), service(port, "udp") or "-", port_range(port),
         str(nc.proc.pid), "nc", ME_USER],
    ]  # fmt: skip


def test_filters_by_protocol_and_port(spawn: Spawner, same_port: int) -> None:
    tcp = [row("tcp", same_port, os.getpid(), ME)]
    udp = [row("udp", same_port, os.getpid(), ME)]
    if HAS_IPV6:
        tcp.append(row("tcp", same_port, os.getpid(), ME, address="::1", family="ipv6"))
        udp.append(row("udp", same_port, os.getpid(), ME, address="::1", family="ipv6"))
    everything = ports_json(spawn)
    assert [r for r in everything if r["port"] == same_port] == tcp + udp
    assert everything == sorted(
        everything, key=lambda r: (r["port"], r["protocol"], r["family"], r["address"])
    )
    assert ports_json(spawn, "--port", str(same_port)) == tcp + udp
    assert ports_json(spawn, "--tcp", "--port", str(same_port)) == tcp
    assert ports_json(spawn, "--udp", "--port", str(same_port)) == udp


def test_leaves_out_sockets_that_do_not_listen(spawn: Spawner) -> None:
    """A bound TCP socket not listening, a connected UDP socket and a client connection."""
    with (
        socket.socket() as bound,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as connected,
        socket.create_server(("127.0.0.1", 0)) as server,
    ):
        bound.bind(("127.0.0.1", 0))
        connected.bind(("127.0.0.1", 0))
        connected.connect(("127.0.0.1", 9))
        listening = server.getsockname()[1]
        with tcp_client(listening) as client:
            ours = {sock.getsockname()[1] for sock in (bound, connected, client)}
            listed = ports_json(spawn)
    # Only this process's rows: another program may use the same numbers (UDP, say).
    assert [r for r in listed if r["port"] in ours and r["pid"] == os.getpid()] == []
    assert row("tcp", listening, os.getpid(), ME) in listed


@needs_ipv6
def test_shows_ipv6_addresses_in_brackets(spawn: Spawner) -> None:
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as server:
        port = server.getsockname()[1]
        rows = table_rows(spawn, "--tcp", "--port", str(port))
    # Another program may have the same number on IPv4.
    assert [r for r in rows if r[1].startswith("[")] == [
        ["tcp", "[::1]", str(port), service(port, "tcp") or "-", port_range(port),
         str(os.getpid()), ME, ME_USER],
    ]  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run portd as another user")
def test_says_when_owners_are_hidden(spawn: Spawner) -> None:
    """As nobody, root's listener is listed without pid or program (its user is known from
    the kernel), and stderr says why."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root")
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        table = spawn(*nobody, *PORTD, "ports", "--tcp", "--port", str(port))
        assert table.wait() == 0, table.stderr
    assert table.output.decode().splitlines()[1].split() == [
        "tcp", "127.0.0.1", str(port), service(port, "tcp") or "-", port_range(port), "-", "-",
        "root",
    ]  # fmt: skip
    assert table.lines == [
        "portd: the owner of 1 socket(s) is not visible: run as root to see every process"
    ]


@pytest.mark.parametrize("value", ["http", "0", "70000"])
def test_bad_port_exits_64_with_usage(spawn: Spawner, value: str) -> None:
    ports = spawn.portd("ports", "--port", value)
    assert ports.wait() == 64
    assert ports.lines == [
        "usage: portd ports [options]",
        f"portd ports: error: argument --port: expected a port from 1 to 65535, got {value!r}",
    ]


def test_pid_lists_only_that_process_sockets(spawn: Spawner, same_port: int) -> None:
    """This process holds ``same_port``; nc holds another; --pid picks each apart."""
    nc = spawn(require_tool("nc"), "-lvn", "127.0.0.1", "0")
    nc_port = nc.port(NC_LISTENING)
    mine = ports_json(spawn, "--pid", str(os.getpid()))
    assert {r["port"] for r in mine} >= {same_port}
    assert {r["pid"] for r in mine} == {os.getpid()}
    assert ports_json(spawn, "--pid", str(nc.proc.pid)) == [row("tcp", nc_port, nc.proc.pid, "nc")]


def test_pid_of_no_process_exits_1(spawn: Spawner) -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text(encoding="ascii"))
    ports = spawn.portd("ports", "--pid", str(pid_max))  # pids stay below pid_max
    assert ports.wait() == 1
    assert ports.lines == [f"portd: no process has pid {pid_max}"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run portd as another user")
def test_pid_of_another_users_process_exits_77(spawn: Spawner) -> None:
    setpriv = require_tool("setpriv")
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    ports = spawn(*nobody, *PORTD, "ports", "--pid", str(os.getpid()))
    assert ports.wait() == 77
    assert ports.lines == [
        f"portd: the sockets of pid {os.getpid()} are not visible to nobody: "
        "run as root (or as its user)"
    ]


@pytest.mark.parametrize("flag", ["--tcp", "--udp", "--port=80"])
def test_unix_with_an_inet_filter_exits_64(spawn: Spawner, flag: str) -> None:
    ports = spawn.portd("ports", "-x", flag)
    assert ports.wait() == 64
    assert ports.lines == ["portd: -x lists unix sockets: --tcp, --udp and --port do not apply"]


def test_unix_lists_a_listener_this_process_holds(spawn: Spawner, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s.sock"))
        server.listen(4)
        inode = os.fstat(server.fileno()).st_ino
        table = spawn.portd("ports", "-x", "--pid", str(os.getpid()))
        assert table.wait() == 0, table.stderr
    lines = table.output.decode().splitlines()
    assert lines[0].split() == ["PROTO", "STATE", "PATH", "INODE", "PID", "PROGRAM", "USER"]
    assert ["u_str", "LISTEN", str(tmp_path / "s.sock"), str(inode), str(os.getpid()), ME,
            ME_USER] in [line.split() for line in lines[1:]]  # fmt: skip
