"""The inet socket factory over real loopback sockets: options, same-port binding, bind
errors."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from portd import privileges
from portd.endpoints.inet import InetAddress, parse_inet
from portd.endpoints.inet_sockets import open_listener_sockets, open_tcp_socket, open_udp_socket
from portd.errors import AddressInUseError, AddressNotAvailableError, PrivilegedPortError
from tests.conftest import needs_ipv6

LOOPBACK = InetAddress(socket.AF_INET, ("127.0.0.1", 0))
LOOPBACK6 = InetAddress(socket.AF_INET6, ("::1", 0, 0, 0))


def test_tcp_socket_disables_nagle_listens_and_does_not_block() -> None:
    with open_tcp_socket(LOOPBACK) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert sock.getblocking() is False
        assert sock.getsockname()[1] != 0


def test_tcp_backlog_is_what_was_asked_as_ss_reports_it() -> None:
    """ss shows a listening socket's backlog in Send-Q."""
    with open_tcp_socket(LOOPBACK, backlog=1024) as sock:
        port = sock.getsockname()[1]
        out = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(out[2]) == min(1024, somaxconn)


def test_udp_socket_never_sets_reuseaddr() -> None:
    with open_udp_socket(LOOPBACK) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        assert sock.type == socket.SOCK_DGRAM


@needs_ipv6
@pytest.mark.parametrize("opener", [open_tcp_socket, open_udp_socket], ids=["tcp", "udp"])
def test_ipv6_sockets_are_v6_only_whatever_the_sysctl(opener: object) -> None:
    assert callable(opener)
    with opener(LOOPBACK6) as sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


@needs_ipv6
@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_wildcard_port_zero_gives_one_port_in_both_families(protocol: str) -> None:
    spec = parse_inet("*:0", protocol)  # type: ignore[arg-type]
    sockets = open_listener_sockets(spec.resolve(), protocol, "test")  # type: ignore[arg-type]
    try:
        assert [sock.family for sock in sockets] == [socket.AF_INET, socket.AF_INET6]
        assert [sock.getsockname()[0] for sock in sockets] == ["0.0.0.0", "::"]
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        assert ports.pop() != 0
    finally:
        for sock in sockets:
            sock.close()


def test_port_zero_binds_without_reuseaddr() -> None:
    """With SO_REUSEADDR Linux searches only part of the range for port 0, and thousands
    of such binds (10,000 listeners) turn quadratic; a fresh port needs no reuse."""
    with open_tcp_socket(LOOPBACK) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0


def test_restart_through_time_wait_binds_the_same_port() -> None:
    """A fixed-port listener's server side closes first, leaving TIME_WAIT on its port;
    a new listener on that port still binds."""
    first = socket.socket()  # as portd opens a fixed port: SO_REUSEADDR, then bind
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    first.bind(("127.0.0.1", 0))
    first.listen()
    port = first.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = first.accept()
    accepted.close()
    assert client.recv(1) == b""
    client.close()
    first.close()
    states = subprocess.run(
        ["ss", "-Htan", "state", "time-wait", f"sport = :{port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert states.strip(), "expected a TIME_WAIT entry on the server's port"
    with open_tcp_socket(InetAddress(socket.AF_INET, ("127.0.0.1", port))) as again:
        assert again.getsockname()[1] == port
        assert again.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1


def test_busy_port_names_the_listener_and_the_holding_process() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        address = InetAddress(socket.AF_INET, ("127.0.0.1", port))
        with pytest.raises(AddressInUseError) as caught:
            open_listener_sockets([address], "tcp", 'listener "web"')
    message = str(caught.value)
    assert message.startswith(f'listener "web": 127.0.0.1:{port} (tcp) is already in use by pid')
    assert f"pid {os.getpid()} (" in message
    assert "\n" not in message
    assert caught.value.exit_code == 69


def test_a_failure_on_a_later_address_closes_the_earlier_sockets() -> None:
    """All or nothing inside one listener: 127.0.0.1 binds, 127.0.0.2 is busy."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.2", 0))
        holder.listen()
        port = holder.getsockname()[1]
        addresses = [
            InetAddress(socket.AF_INET, ("127.0.0.1", port)),
            InetAddress(socket.AF_INET, ("127.0.0.2", port)),
        ]
        with pytest.raises(AddressInUseError):
            open_listener_sockets(addresses, "tcp", "test")
        mine = [
            (entry.laddr.ip, entry.laddr.port)
            for entry in psutil.Process().net_connections(kind="tcp")
            if entry.status == psutil.CONN_LISTEN
        ]
        assert mine == [("127.0.0.2", port)], "the 127.0.0.1 socket was left open"


@needs_ipv6
def test_an_address_not_on_this_host_is_unavailable() -> None:
    """2001:db8::/32 is for documentation: never assigned here, and nothing is sent."""
    address = InetAddress(socket.AF_INET6, ("2001:db8::1", 0, 0, 0))
    with pytest.raises(AddressNotAvailableError, match=r"address not available") as caught:
        open_listener_sockets([address], "tcp", "test")
    assert caught.value.exit_code == 69


def test_privileged_port_without_capability_fails_before_binding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(privileges, "has_capability", lambda bit: False)
    monkeypatch.setattr(privileges, "unprivileged_port_start", lambda: 1024)
    address = InetAddress(socket.AF_INET, ("127.0.0.1", 80))
    with pytest.raises(PrivilegedPortError) as caught:
        open_listener_sockets([address], "tcp", 'listener "web"')
    message = str(caught.value)
    assert message.startswith('listener "web": port 80 is privileged')
    assert "net.ipv4.ip_unprivileged_port_start = 1024" in message
    for remedy in ("socket activation", "AmbientCapabilities=CAP_NET_BIND_SERVICE", ">= 1024"):
        assert remedy in message
    assert caught.value.exit_code == 77


def test_ports_at_or_above_the_sysctl_need_no_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges, "has_capability", lambda bit: False)
    monkeypatch.setattr(privileges, "unprivileged_port_start", lambda: 0)
    privileges.check_port_allowed(80, "test")  # sysctl 0 (containers): every port is free
