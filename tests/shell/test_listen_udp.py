"""`portd listen -u` as a real process: datagrams from any peer to stdout, stdin to the
last peer, against the real nc and plain Python sockets."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.processes import WAIT_S, Spawner
from tests.support import require_tool


@pytest.fixture
def udp_clients() -> Iterator[list[socket.socket]]:
    """Two UDP sockets on loopback, closed at teardown."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(WAIT_S)
    yield sockets
    for sock in sockets:
        sock.close()


def test_exchanges_datagrams_with_nc_both_ways(spawn: Spawner) -> None:
    nc = require_tool("nc")
    listen = spawn.portd("listen", "-u", "127.0.0.1:0", stdin=subprocess.PIPE)
    port = listen.port()
    assert listen.lines == [f"listening on 127.0.0.1:{port} (udp)"]
    client = spawn(nc, "-u", "127.0.0.1", str(port), stdin=subprocess.PIPE)
    client.write(b"from nc\n")
    assert listen.expect_output(8) == b"from nc\n"
    listen.write(b"from portd\n")
    assert client.expect_output(11) == b"from portd\n"
    client.write(b"again\n")
    assert listen.expect_output(14) == b"from nc\nagain\n"
    listen.interrupt()
    assert listen.wait() == 130
    assert listen.lines == [f"listening on 127.0.0.1:{port} (udp)"]


def test_replies_go_to_the_last_peer(spawn: Spawner, udp_clients: list[socket.socket]) -> None:
    """Any number of peers; stdin written before the first one waits for it."""
    first, second = udp_clients
    listen = spawn.portd("listen", "-u", "127.0.0.1:0", stdin=subprocess.PIPE)
    server = ("127.0.0.1", listen.port())
    listen.write(b"early\n")  # nobody to send it to yet
    first.sendto(b"a1", server)
    assert first.recvfrom(100) == (b"early\n", server)
    assert listen.expect_output(2) == b"a1"
    second.sendto(b"b1", server)
    assert listen.expect_output(4) == b"a1b1"
    listen.write(b"for the second\n")
    assert second.recvfrom(100) == (b"for the second\n", server)
    first.sendto(b"a2", server)
    assert listen.expect_output(6) == b"a1b1a2"
    listen.write(b"for the first\n")
    # The next datagram the first peer sees is this one: "for the second" never went to it.
    assert first.recvfrom(100) == (b"for the first\n", server)
    listen.interrupt()
    assert listen.wait() == 130


def test_quit_after_eof_ends_a_udp_session(
    spawn: Spawner, udp_clients: list[socket.socket]
) -> None:
    """UDP has no EOF to wait for: -q 0 ends the session once stdin is sent; -v names the
    sender and gives totals."""
    peer = udp_clients[0]
    listen = spawn.portd("listen", "-u", "-v", "-q", "0", "127.0.0.1:0", stdin=subprocess.PIPE)
    server = ("127.0.0.1", listen.port())
    peer.sendto(b"hello", server)
    listen.expect_output(5)
    listen.write(b"bye")
    assert peer.recvfrom(100) == (b"bye", server)
    listen.close_stdin()
    assert listen.wait() == 0
    assert listen.output == b"hello"
    assert listen.lines[1] == f"datagram from 127.0.0.1:{peer.getsockname()[1]}"
    assert listen.lines[2].startswith(
        "received 5 bytes sha256 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824;"
        " sent 3 bytes sha256 "
    )
    assert len(listen.lines) == 3


def test_verbose_names_each_new_sender_once(
    spawn: Spawner, udp_clients: list[socket.socket]
) -> None:
    """-v: a line when the sender changes, not one per datagram."""
    first, second = udp_clients
    listen = spawn.portd("listen", "-u", "-v", "127.0.0.1:0")
    server = ("127.0.0.1", listen.port())
    for count, sock in enumerate((first, first, second, first), start=1):
        sock.sendto(str(count).encode(), server)
        listen.expect_output(count)  # one at a time: their order is the order sent
    names = [f"datagram from 127.0.0.1:{sock.getsockname()[1]}" for sock in (first, second, first)]
    assert listen.expect_lines("^datagram from ", 3) == names
    assert listen.output == b"1234"
    listen.interrupt()
    assert listen.wait() == 130
