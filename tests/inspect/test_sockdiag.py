"""The kernel socket readers, in process: sock_diag over netlink and its /proc/net
fallback find the same sockets this test holds, with the same states, queues, uid and
inode; netlink adds the listener's backlog and IPV6_V6ONLY."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from portd.inspect import holders, procnet
from portd.inspect.holders import Holders, systemd_unit
from portd.inspect.sockdiag import (
    ALL_STATES,
    LISTEN_STATES,
    InetSocket,
    inet_sockets,
    tcp_socket,
)
from tests.conftest import needs_ipv6


@pytest.fixture
def held() -> Iterator[dict[str, socket.socket]]:
    """A v4 listener (backlog 3) with one connection in its accept queue, and a UDP socket."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=3)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    yield {"listener": listener, "client": client, "udp": udp}
    for sock in (client, listener, udp):
        sock.close()


def ours(found: list[InetSocket], sockets: dict[str, socket.socket]) -> list[InetSocket]:
    """The test's sockets (by inode), and the queued connection (no inode yet: by its
    exact addresses), among every socket of the host."""
    inodes = {os.fstat(sock.fileno()).st_ino for sock in sockets.values()}
    queued = (sockets["listener"].getsockname()[1], sockets["client"].getsockname()[1])
    return sorted(
        entry for entry in found
        if entry.inode in inodes
        or (entry.protocol == "tcp" and (entry.port, entry.peer_port) == queued)
    )  # fmt: skip


def test_netlink_reports_state_queues_uid_and_inode(held: dict[str, socket.socket]) -> None:
    listener = held["listener"]
    (entry,) = [e for e in inet_sockets(("tcp",), LISTEN_STATES)
                if e.port == listener.getsockname()[1]]  # fmt: skip
    assert (entry.state, entry.address, entry.recv_q, entry.send_q) == ("LISTEN", "127.0.0.1", 1, 3)
    assert entry.uid == os.geteuid()
    assert entry.inode == os.fstat(listener.fileno()).st_ino


def test_proc_net_finds_the_same_sockets(held: dict[str, socket.socket]) -> None:
    """Everything but what /proc/net cannot know: a listener's backlog, v6-only."""
    netlink = ours(inet_sockets(("tcp", "udp"), ALL_STATES), held)
    fallback = ours(procnet.inet_sockets(("tcp", "udp"), ALL_STATES), held)
    assert len(netlink) == 4  # listener, client, its accepted-to-be peer, udp
    assert fallback == [
        entry._replace(send_q=None if entry.state == "LISTEN" else entry.send_q, v6only=None)
        for entry in netlink
    ]


@needs_ipv6
@pytest.mark.parametrize("v6only", [True, False])
def test_netlink_tells_a_dual_stack_socket(v6only: bool) -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(("::", 0))
        sock.listen()
        # By inode, not port: with V6ONLY, another test's IPv4 socket may hold the number.
        inode = os.fstat(sock.fileno()).st_ino
        (entry,) = [e for e in inet_sockets(("tcp",), LISTEN_STATES) if e.inode == inode]
    assert (entry.address, entry.v6only) == ("::", v6only)


def test_holders_name_this_process_and_descriptor(held: dict[str, socket.socket]) -> None:
    inode = os.fstat(held["udp"].fileno()).st_ino
    (holder,) = Holders({inode}).of(inode)
    assert (holder.pid, holder.fd) == (os.getpid(), held["udp"].fileno())


@pytest.mark.parametrize(
    ("cgroup", "unit"),
    [
        ("0::/system.slice/nginx.service\n", "nginx.service"),
        ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/api.service\n",
         "api.service (user 1000)"),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
        ("12:pids:/\n1:name=systemd:/system.slice/cron.service\n0::/\n", "cron.service"),
        ("1:name=systemd:/system.slice/cron.service\n", "cron.service"),
        ("0::/\n", None),
    ],
)  # fmt: skip
def test_systemd_unit_from_the_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cgroup: str, unit: str | None
) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(cgroup, encoding="ascii")
    monkeypatch.setattr(holders, "PROC", tmp_path)
    assert systemd_unit(42) == unit


def test_an_exact_lookup_finds_one_connection_by_its_two_ends(
    held: dict[str, socket.socket],
) -> None:
    """Both ends of the queued connection, each by (local, remote); no other socket."""
    client = held["client"]
    local, remote = client.getsockname(), client.getpeername()
    found = tcp_socket(socket.AF_INET, local, remote)
    assert found is not None
    assert (found.state, found.port, found.peer_port) == ("ESTAB", local[1], remote[1])
    assert found.inode == os.fstat(client.fileno()).st_ino
    server_end = tcp_socket(socket.AF_INET, remote, local)
    assert server_end is not None
    assert (server_end.port, server_end.peer_port) == (remote[1], local[1])
    assert tcp_socket(socket.AF_INET, (local[0], 1), remote) is None  # no listener instead


def test_an_exact_lookup_without_netlink_reads_proc_net(
    held: dict[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    from portd.inspect import sockdiag

    client = held["client"]
    local, remote = client.getsockname(), client.getpeername()
    with_netlink = tcp_socket(socket.AF_INET, local, remote)

    def refused() -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(sockdiag, "_netlink", refused)
    assert with_netlink is not None
    assert tcp_socket(socket.AF_INET, local, remote) == with_netlink._replace(v6only=None)
