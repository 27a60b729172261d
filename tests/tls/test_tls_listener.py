"""A TLS listener serves any stream handler unchanged; failed handshakes are closed,
counted by reason and never reach a handler; plaintext gets nothing (or the 400 page
when asked); a full listener never writes its 503 in plaintext to a TLS client.

Each runs on both event loops: their TLS transports are separate implementations.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from typing import ClassVar

import pytest

from portd.endpoints.base import ProtocolName
from portd.handlers.base import Connection, Handler, StreamSession
from portd.testing import Server, serve
from portd.tls.accept import PLAINTEXT_400

LOOPS = ["asyncio", "uvloop"]


def tls_client(server: Server, **context: ssl.SSLContext) -> ssl.SSLSocket:
    ctx = context.get("ctx") or server.ssl_context()
    raw = socket.create_connection(server.address, timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()  # a failed handshake must not leave the socket to the garbage collector
        raise


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_echo_over_tls(loop: str) -> None:
    with serve("echo", tls=True, loop=loop) as server, tls_client(server) as client:
        assert client.version() in ("TLSv1.2", "TLSv1.3")
        client.sendall(b"ping" * 1000)
        received = b""
        while len(received) < 4000:
            received += client.recv(65536)
        assert received == b"ping" * 1000
        client.close()
        (record,) = server.wait_connections(1)
        assert (record.bytes_in, record.bytes_out) == (4000, 4000)


def test_http_hello_over_tls_offers_http11(loop: str) -> None:
    with serve("http-hello", tls=True, loop=loop) as server, tls_client(server) as client:
        assert client.selected_alpn_protocol() is None  # the client offered none
    ctx = ssl.create_default_context(cafile=server.ca_path)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with serve("http-hello", tls=True, loop=loop) as server, tls_client(server, ctx=ctx) as client:
        assert client.selected_alpn_protocol() == "http/1.1"
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_all(client)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"\r\n\r\nHello from portd\n")
        assert server.url.startswith("https://127.0.0.1:")


def failures(server: Server, count: int = 1) -> dict[str, int]:
    """The listener's handshake failures, once ``count`` are in (read on its loop's
    thread's data: the counter is final once the adoption task ended)."""
    import time

    listener = server.running.listener
    assert listener is not None
    deadline = time.monotonic() + 10
    while sum(listener.handshake_failures.values()) < count:
        assert time.monotonic() < deadline, dict(listener.handshake_failures)
        time.sleep(0.01)  # polling a counter another thread sets: not a readiness wait
    return dict(listener.handshake_failures)


def test_plaintext_http_gets_a_closed_connection_and_no_byte(loop: str) -> None:
    with serve("http-hello", tls=True, loop=loop) as server:
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_all(client) == b""
        assert failures(server) == {"plaintext_http": 1}
        assert server.connections == ()  # the handler never saw it


def test_plaintext_http_gets_nginx_400_when_asked(loop: str) -> None:
    with serve("http-hello", tls=True, loop=loop, tls_plaintext_response="400") as server:
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_all(client) == PLAINTEXT_400
        assert failures(server) == {"plaintext_http": 1}
        with tls_client(server) as client:  # TLS clients still pass the peek
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert read_all(client).startswith(b"HTTP/1.1 200 OK")


def test_a_silent_client_is_cut_at_the_handshake_timeout(loop: str) -> None:
    with serve("echo", tls=True, loop=loop, tls_handshake_timeout_s=0.2) as server:
        with socket.create_connection(server.address, timeout=10) as client:
            assert read_all(client) == b""  # closed by the server, not the client's timeout
        assert failures(server) == {"timeout": 1}


def test_an_old_client_fails_with_unsupported_protocol(loop: str) -> None:
    with serve("echo", tls=True, loop=loop, tls_min_version="1.3") as server:
        ctx = server.ssl_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        # The server closes without an alert (neither loop's TLS transport flushes one
        # after a failed handshake): the client reads an EOF.
        with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNEXPECTED_EOF"):
            tls_client(server, ctx=ctx)
        assert failures(server) == {"unsupported_protocol": 1}


def test_a_client_that_distrusts_the_certificate_is_counted(loop: str) -> None:
    with serve("echo", tls=True, loop=loop) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_client(server, ctx=ssl.create_default_context())
        assert failures(server) == {"tlsv1_alert_unknown_ca": 1}


def test_a_full_tls_http_listener_never_writes_503_in_plaintext(loop: str) -> None:
    with serve("http-hello", tls=True, loop=loop, max_connections=1) as server:
        with tls_client(server) as first:
            first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert first.recv(12) == b"HTTP/1.1 200"
            with socket.create_connection(server.address, timeout=10) as second:
                try:
                    answer = read_all(second)
                except ConnectionResetError:
                    answer = b""
                assert b"503" not in answer
                assert answer == b""
        assert server.running.listener is not None
        assert server.running.listener.gate.refusals == {"max_connections": 1}


class TLSReport(Handler):
    """Writes what conn.tls says, then closes."""

    name = "tls-report"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})

    def open_session(self, conn: Connection) -> StreamSession:
        info = conn.tls
        text = "plain" if info is None else f"{info.version} {info.cipher} {info.peer_subject}"
        conn.write(text.encode())
        conn.close()
        return StreamSession()


def test_conn_tls_tells_a_handler_what_was_negotiated(loop: str) -> None:
    with serve(TLSReport, loop=loop) as plain, socket.create_connection(plain.address) as c:
        assert read_all(c) == b"plain"
    with serve(TLSReport, tls=True, tls_client_auth=True, loop=loop) as server:
        card = server.issue_client_cert("alice")
        with tls_client(server, ctx=server.ssl_context(card)) as client:
            negotiated = client.version()
            version, cipher, subject = read_all(client).decode().split(" ")
        assert version == negotiated
        assert cipher.startswith("TLS_") or "-" in cipher
        assert subject == "CN=alice"


def test_mutual_tls_refuses_a_client_without_a_certificate(loop: str) -> None:
    with serve("echo", tls=True, tls_client_auth=True, loop=loop) as server:
        with tls_client(server) as client:  # TLS 1.3: the refusal arrives after the handshake
            client.sendall(b"x")
            try:
                answer = client.recv(1)
            except (ssl.SSLError, ConnectionResetError):
                answer = b""
            assert answer == b""  # never echoed: the handler never saw the connection
        assert failures(server) == {"client_certificate_missing": 1}


@pytest.fixture
def stop_mid_handshake() -> Iterator[list[socket.socket]]:
    clients: list[socket.socket] = []
    yield clients
    for client in clients:
        client.close()


def test_stopping_cancels_handshakes_in_progress(
    loop: str, stop_mid_handshake: list[socket.socket]
) -> None:
    """A client stuck in its handshake does not hold the server's stop (or leak a task)."""
    with serve("echo", tls=True, loop=loop, check_leaks=False) as server:
        client = socket.create_connection(server.address, timeout=10)
        stop_mid_handshake.append(client)
        client.sendall(b"\x16\x03\x01")  # a record header, never the rest
        listener = server.running.listener
        assert listener is not None
    assert listener.live == 0
    assert listener.gate.active == 0
