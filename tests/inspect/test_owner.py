"""find_port_owner: the holder named in "already in use by ..." lines."""

from __future__ import annotations

import os
import socket

from portd.endpoints.inet import InetAddress
from portd.inspect.owner import find_port_owner
from portd.inspect.sockdiag import ALL_STATES, inet_sockets

ME = f"pid {os.getpid()} ("


def test_a_tcp_listener_is_named() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        owner = find_port_owner("tcp", InetAddress(socket.AF_INET, ("127.0.0.1", port)))
    assert owner is not None
    assert owner.startswith(ME)


def test_a_dual_stack_udp_socket_holds_the_ipv4_port() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        port = sock.getsockname()[1]
        owner = find_port_owner("udp", InetAddress(socket.AF_INET, ("127.0.0.1", port)))
    assert owner is not None
    assert owner.startswith(ME)


def test_only_the_states_that_hold_a_port_are_read() -> None:
    """A connection's local port (here the client's, in ESTABLISHED) holds no bind: the
    kernel's filter leaves it out, as it leaves out the TIME-WAIT crowd of a busy host."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            port = client.getsockname()[1]
            assert any(e.port == port for e in inet_sockets(("tcp",), ALL_STATES))
            address = InetAddress(socket.AF_INET, ("127.0.0.1", port))
            assert find_port_owner("tcp", address) is None
