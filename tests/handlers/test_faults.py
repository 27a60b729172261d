"""The fault handlers that end or starve connections, each proven with a real client:
blackhole, stall, reset, close-after, and the refusing port."""

from __future__ import annotations

import errno
import http.client
import socket

import pytest

from portd.config import parse_config
from portd.errors import ConfigError
from portd.testing import Server, ServerFactory, serve

CHUNK = b"x" * 65536
NEVER_S = 0.3  # how long a client waits for what must not come


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    """The server's event loop: sockets options and pausing go through each differently."""
    name: str = request.param
    return name


def connect(server: Server, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(server.address, timeout=timeout_s)


def read_until_reset(client: socket.socket) -> bytes:
    """Everything the server sent before its RST (the RST must come)."""
    received = b""
    with pytest.raises(ConnectionResetError):  # noqa: PT012 - data first, then the reset
        while chunk := client.recv(65536):
            received += chunk
    return received


def read_to_eof(client: socket.socket) -> bytes:
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def echo_for_a_while(client: socket.socket) -> None:
    for _ in range(1024):  # 64 MiB at most
        client.sendall(CHUNK)
        client.recv(65536)


def fill_until_blocked(client: socket.socket) -> int:
    """Send until the kernel's buffers are full; return how much went."""
    client.setblocking(False)
    sent = 0
    while True:
        try:
            sent += client.send(CHUNK)
        except BlockingIOError:
            return sent


def test_blackhole_never_answers_and_a_closed_client_is_no_leak(loop: str) -> None:
    with (
        serve("blackhole", check_leaks=True, loop=loop) as server,
        connect(server, NEVER_S) as client,
    ):
        client.sendall(b"hello?")
        with pytest.raises(TimeoutError):
            client.recv(1)
    (record,) = server.connections
    # uvloop reads (and drops) the first chunk: it resumes reading after connection_made.
    expected_in = 0 if loop == "asyncio" else len(b"hello?")
    assert (record.bytes_in, record.bytes_out, record.how_it_ended) == (expected_in, 0, "closed")


def test_blackhole_never_reads_so_a_sender_blocks(loop: str) -> None:
    with serve("blackhole", loop=loop) as server, connect(server) as client:
        sent = fill_until_blocked(client)
        assert 0 < sent < 256 * 1024 * 1024  # what the kernel's buffers hold, no more
    # The client's FIN waits behind its unsent bytes, so the server never saw an end; at
    # the stop, the kernel's state of the client's end (FIN-WAIT-1) says it closed.
    (record,) = server.connections
    assert record.how_it_ended == "closed"
    assert record.bytes_in == 0 if loop == "asyncio" else record.bytes_in <= 256 * 1024


def test_blackhole_drops_datagrams() -> None:
    with (
        serve("blackhole", protocol="udp") as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(NEVER_S)
        client.sendto(b"anyone?", server.address)
        with pytest.raises(TimeoutError):
            client.recv(64)
        assert [d.payload for d in server.wait_datagrams(1)] == [b"anyone?"]


def test_stall_reads_everything_and_never_answers_even_after_eof(loop: str) -> None:
    payload = CHUNK * 64  # 4 MiB: more than loopback buffers hold, so it must be read
    with serve("stall", loop=loop) as server, connect(server, timeout_s=10) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        client.settimeout(NEVER_S)
        with pytest.raises(TimeoutError):
            client.recv(1)
    (record,) = server.connections
    assert (record.bytes_in, record.bytes_out) == (len(payload), 0)


def test_reset_at_once_is_seen_as_connection_reset(reset_server: Server) -> None:
    # A connect() with a timeout checks SO_ERROR after the handshake, so the RST may
    # already surface there; otherwise the first recv() sees it.
    with pytest.raises(ConnectionResetError), connect(reset_server) as client:
        client.recv(1)
    assert reset_server.wait_connections(1)[0].how_it_ended == "aborted"


def test_reset_after_bytes_sent_echoes_exactly_that_many_first(
    portd_server: ServerFactory, loop: str
) -> None:
    server = portd_server("reset", after_bytes=5, loop=loop)
    with connect(server) as client:
        client.sendall(b"abc")
        assert client.recv(3) == b"abc"
        client.sendall(b"defgh")
        assert read_until_reset(client) == b"de"


def test_reset_after_bytes_received_cuts_an_upload(portd_server: ServerFactory, loop: str) -> None:
    server = portd_server("reset", after_bytes="64KiB", counting="received", loop=loop)
    with connect(server) as client, pytest.raises(ConnectionResetError):
        echo_for_a_while(client)
    (record,) = server.wait_connections(1)
    assert record.bytes_out <= 65536  # the echo stopped at the limit


def test_close_after_at_once_is_a_clean_eof(close_after_server: Server) -> None:
    with connect(close_after_server) as client:
        assert client.recv(1) == b""


def test_close_after_received_bytes_echoes_them_then_closes(
    portd_server: ServerFactory, loop: str
) -> None:
    server = portd_server("close-after", after_bytes=10, counting="received", loop=loop)
    with connect(server) as client:
        client.sendall(b"0123456789abcdef")
        assert read_to_eof(client) == b"0123456789"


def http_response_bytes(server: Server) -> bytes:
    with connect(server) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_to_eof(client)


def test_close_after_cuts_an_http_response_in_its_body(portd_server: ServerFactory) -> None:
    whole = http_response_bytes(portd_server("http-hello"))
    head_bytes = whole.index(b"\r\n\r\n") + 4
    server = portd_server("close-after", wraps="http-hello", after_bytes=head_bytes + 5)
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Connection": "close"})
        response = connection.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        assert cut.value.partial == whole[head_bytes : head_bytes + 5]
    finally:
        connection.close()


def test_refuse_is_refused_while_it_holds_the_port(refuse_server: Server) -> None:
    with pytest.raises(ConnectionRefusedError):
        connect(refuse_server)
    with socket.socket() as thief:
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError, match="in use") as taken:
            thief.bind(refuse_server.address)
        assert taken.value.errno == errno.EADDRINUSE
    assert refuse_server.connections == ()


def test_refuse_over_udp_is_a_config_error() -> None:
    with (
        pytest.raises(ConfigError, match="handler 'refuse' serves tcp only"),
        serve("refuse", protocol="udp"),
    ):
        pass


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"handler": "reset", "after_bytes": -1}, "after_bytes = -1: expected a byte count"),
        ({"handler": "close-after", "counting": "both"}, "expected one of 'sent', 'received'"),
        ({"handler": "reset", "wraps": "file-receive"}, "expected one of 'echo', 'http-hello'"),
        ({"handler": "stall", "protocol": "udp"}, "handler 'stall' serves tcp only"),
    ],
)
def test_fault_options_are_checked_at_config_load(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"listener": [{"bind": "127.0.0.1:0", **table}]}, "t.toml")
    assert message in raised.value.lines[0]
