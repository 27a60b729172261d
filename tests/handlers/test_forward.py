"""The forward handler relays correctly, over real sockets on both event loops: bytes
exact both ways, half-closes crossing over, an RST passed on as an RST, flow control
both ways, upstream failures as an RST to the client, unix upstreams, PROXY headers."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from portd.testing import forward, serve

WAIT_S = 10.0
LINGER_RESET = struct.pack("ii", 1, 0)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    """The proxy's event loop."""
    name: str = request.param
    return name


@contextlib.contextmanager
def upstream_socket() -> Iterator[socket.socket]:
    """A plain listening socket the test accepts on by hand (an upstream it controls)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(WAIT_S)
        yield listener


def address(listener: socket.socket) -> tuple[str, int]:
    host, port = listener.getsockname()
    return host, port


def accept(listener: socket.socket) -> socket.socket:
    sock, _ = listener.accept()
    sock.settimeout(WAIT_S)
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_bytes_go_both_ways_exactly_and_the_record_names_the_upstream(loop: str) -> None:
    payload = os.urandom(3 << 20)
    with serve("echo") as echo, forward(echo, loop=loop) as proxy:
        with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
            sender = threading.Thread(target=client.sendall, args=(payload,))
            sender.start()
            received = bytearray()
            while len(received) < len(payload):
                received += client.recv(1 << 16)
            sender.join()
        (record,) = proxy.wait_connections(1)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert (record.bytes_in, record.bytes_out) == (len(payload), len(payload))
    assert record.upstream == f"127.0.0.1:{echo.port}"
    assert record.upstream_ended == "closed"


def test_the_clients_half_close_reaches_the_upstream_whose_answer_still_comes_back(
    loop: str,
) -> None:
    with upstream_socket() as listener, forward(address(listener), loop=loop) as proxy:
        with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
            client.sendall(b"request")
            client.shutdown(socket.SHUT_WR)
            with accept(listener) as server:
                assert read_to_eof(server) == b"request"  # the FIN came through
                server.sendall(b"answer after your FIN")
            assert read_to_eof(client) == b"answer after your FIN"
        (record,) = proxy.wait_connections(1)
    assert record.how_it_ended == "closed"


def test_the_upstreams_half_close_reaches_the_client_who_may_still_send(loop: str) -> None:
    with upstream_socket() as listener, forward(address(listener), loop=loop) as proxy:
        with (
            socket.create_connection(proxy.address, timeout=WAIT_S) as client,
            accept(listener) as server,
        ):
            server.sendall(b"banner")
            server.shutdown(socket.SHUT_WR)
            assert read_to_eof(client) == b"banner"
            client.sendall(b"still talking")
            client.shutdown(socket.SHUT_WR)
            assert read_to_eof(server) == b"still talking"
        (record,) = proxy.wait_connections(1)
    assert (record.bytes_in, record.bytes_out, record.how_it_ended) == (13, 6, "closed")


def test_a_client_reset_reaches_the_upstream_as_a_reset(loop: str) -> None:
    with upstream_socket() as listener, forward(address(listener), loop=loop) as proxy:
        client = socket.create_connection(proxy.address, timeout=WAIT_S)
        with accept(listener) as server:
            client.sendall(b"x")
            assert server.recv(1) == b"x"
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            client.close()
            with pytest.raises(ConnectionResetError):
                read_to_eof(server)
        (record,) = proxy.wait_connections(1)
    assert record.how_it_ended == "reset"


def test_an_upstream_reset_reaches_the_client_as_a_reset(loop: str) -> None:
    with upstream_socket() as listener, forward(address(listener), loop=loop) as proxy:
        with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
            server = accept(listener)
            server.sendall(b"partial")
            assert client.recv(7) == b"partial"
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            server.close()
            with pytest.raises(ConnectionResetError):
                read_to_eof(client)
        (record,) = proxy.wait_connections(1)
    assert record.upstream_ended == "reset"


def test_a_refused_upstream_resets_the_client_and_names_the_reason(loop: str) -> None:
    with upstream_socket() as listener:
        dead = address(listener)  # bound, closed at the end of the block: nobody listens
    with forward(dead, loop=loop) as proxy:
        expect_reset(proxy.address)
        (record,) = proxy.wait_connections(1)
    assert record.upstream_ended == "upstream_failed: Connection refused"
    assert record.how_it_ended == "aborted"


def test_an_upstream_that_never_answers_times_out_into_a_reset(loop: str) -> None:
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # one connection fits the backlog; the next SYNs are dropped
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        try:
            with forward(address(full), connect_timeout_s=0.3, loop=loop) as proxy:
                expect_reset(proxy.address)
                (record,) = proxy.wait_connections(1)
        finally:
            for filler in fillers:
                filler.close()
    assert record.upstream_ended == "upstream_failed: timed out"


def fill_without_reading(sock: socket.socket, limit: int = 256 << 20) -> int:
    """Send until the path stops taking bytes (returns how many went), or ``limit``."""
    sock.setblocking(False)
    sent, chunk, stalls = 0, b"z" * (1 << 16), 0
    while sent < limit:
        try:
            sent += sock.send(chunk)
            stalls = 0
        except BlockingIOError:
            stalls += 1
            if stalls > 20:
                return sent
            threading.Event().wait(0.01)  # a measurement: did the path take more?
    return sent


@pytest.mark.parametrize("direction", ["client_to_upstream", "upstream_to_client"])
def test_a_side_that_stops_reading_stops_the_other_side(loop: str, direction: str) -> None:
    """Memory stays bounded: the sender is stopped by TCP, not buffered by the proxy."""
    with upstream_socket() as listener, forward(address(listener), loop=loop) as proxy:
        with (
            socket.create_connection(proxy.address, timeout=WAIT_S) as client,
            accept(listener) as server,
        ):
            sender = client if direction == "client_to_upstream" else server
            sent = fill_without_reading(sender)
            assert sent < 64 << 20  # kernel buffers on two paths plus the proxy's
            sender.settimeout(WAIT_S)
            receiver = server if sender is client else client
            receiver.setblocking(True)
            got = 0
            while got < sent:  # and every byte is still delivered once read
                got += len(receiver.recv(1 << 20))
            assert got == sent
        assert proxy.wait_connections(1)


def test_a_unix_upstream(loop: str, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    with serve("echo", bind=f"unix:{path}") as echo, forward(echo, loop=loop) as proxy:
        assert proxy.upstream == f"unix:{path}"
        with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
            client.sendall(b"over unix")
            client.shutdown(socket.SHUT_WR)
            assert read_to_eof(client) == b"over unix"


def test_a_unix_listener_forwards_to_tcp(loop: str, tmp_path: Path) -> None:
    path = tmp_path / "proxy.sock"
    with (
        serve("echo") as echo,
        forward(echo, bind=f"unix:{path}", loop=loop) as proxy,
        socket.socket(socket.AF_UNIX) as client,
    ):
        client.settimeout(WAIT_S)
        client.connect(proxy.address)
        client.sendall(b"from unix")
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(client) == b"from unix"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_proxy_protocol_header_names_the_real_client(loop: str, version: str) -> None:
    with (
        serve("recorder") as upstream,
        forward(upstream, proxy_protocol=version, loop=loop) as proxy,
    ):
        with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
            client_port = client.getsockname()[1]
            client.sendall(b"hello")
        (record,) = upstream.wait_connections(1)
    received = record.received or b""
    if version == "v1":
        expected = f"PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {proxy.port}\r\n".encode()
    else:
        addresses = socket.inet_aton("127.0.0.1") * 2 + struct.pack("!HH", client_port, proxy.port)
        expected = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + addresses
    assert received == expected + b"hello"


def expect_reset(where: tuple[str, int]) -> None:
    """A new connection is reset (the RST may come before connect() returns)."""
    with (
        pytest.raises(ConnectionResetError),
        socket.create_connection(where, timeout=WAIT_S) as new,
    ):
        read_to_eof(new)


def test_down_resets_live_and_new_connections_and_up_serves_again(loop: str) -> None:
    with serve("echo") as echo, forward(echo, loop=loop) as proxy:
        live = socket.create_connection(proxy.address, timeout=WAIT_S)
        live.sendall(b"a")
        assert live.recv(1) == b"a"
        with proxy.down():
            with pytest.raises(ConnectionResetError):
                read_to_eof(live)
            expect_reset(proxy.address)
        live.close()
        with socket.create_connection(proxy.address, timeout=WAIT_S) as again:
            again.sendall(b"up")
            assert again.recv(2) == b"up"


def test_a_connection_portd_cuts_is_cut_on_both_sides(loop: str) -> None:
    """The idle timeout ends the client's side with an RST; the upstream's gets one too."""
    with (
        upstream_socket() as listener,
        forward(address(listener), idle_timeout_s=0.2, loop=loop) as proxy,
        socket.create_connection(proxy.address, timeout=WAIT_S) as client,
        accept(listener) as server,
    ):
        client.sendall(b"x")
        assert server.recv(1) == b"x"
        with pytest.raises(ConnectionResetError):
            read_to_eof(client)
        with pytest.raises(ConnectionResetError):
            read_to_eof(server)
        (record,) = proxy.wait_connections(1)
    assert (record.how_it_ended, record.upstream_ended) == ("idle_timeout", "aborted")
