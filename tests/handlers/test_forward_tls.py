"""TLS on a forward: terminated on its listener (a layer, as on any stream listener)
and originated to its upstream (``upstream_tls``, ``upstream_ca``,
``upstream_servername``, ``upstream_verify``), against curl, openssl s_server and portd's
TLS test servers; a failed upstream handshake resets the client and says why."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from portd.testing import Server, forward, serve
from tests.processes import Spawner, spawn
from tests.support import require_tool, run_portd

__all__ = ["spawn"]  # the fixture, for this module

OPENSSL_ACCEPT = r"^ACCEPT 127\.0\.0\.1:(\d+)$"


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    """The proxy's event loop (their TLS transports are two implementations)."""
    name: str = request.param
    return name


def exchange(address: tuple[str, int], data: bytes, context: ssl.SSLContext | None = None,
             answer_size: int | None = None) -> bytes:  # fmt: skip
    """Send ``data`` (over TLS with ``context``); what comes back, up to ``answer_size``."""
    size = len(data) if answer_size is None else answer_size
    with socket.create_connection(address, timeout=10) as raw:
        sock = context.wrap_socket(raw, server_hostname="localhost") if context else raw
        with sock:
            sock.sendall(data)
            received = b""
            while len(received) < size and (chunk := sock.recv(65536)):
                received += chunk
    return received


def test_curl_reaches_a_plaintext_upstream_through_a_forward_that_terminates_tls(
    loop: str,
) -> None:
    with serve("http-hello") as upstream, forward(upstream, tls=True, loop=loop) as proxy:
        assert proxy.url.startswith("https://")
        done = subprocess.run(
            [require_tool("curl"), "-sS", "--cacert", proxy.ca_path, proxy.url + "/"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stdout, done.stderr) == (0, "Hello from portd\n", "")
        (record,) = proxy.wait_connections(1)
    assert record.upstream_ended == "closed"


def test_a_forward_originates_tls_to_openssl_s_server(
    loop: str, spawn: Spawner, tmp_path: Path
) -> None:
    """openssl's -rev answers each line reversed over TLS; the client speaks plaintext."""
    assert run_portd("cert", "--out", str(tmp_path), "localhost", "127.0.0.1").returncode == 0
    server = spawn(
        "sh",
        "-c",
        f'exec "{require_tool("openssl")}" s_server -rev -naccept 1 '
        f"-accept 127.0.0.1:0 -cert {tmp_path}/cert.pem -key {tmp_path}/key.pem >&2",
    )
    port = server.port(OPENSSL_ACCEPT)
    with forward(
        f"127.0.0.1:{port}", upstream_tls=True, upstream_ca=f"{tmp_path}/ca.pem", loop=loop
    ) as proxy:
        assert exchange(proxy.address, b"through portd\n") == b"dtrop hguorht\n"
        (record,) = proxy.wait_connections(1)
    assert (record.bytes_in, record.bytes_out) == (14, 14)


def test_tls_on_both_sides_reaches_a_tls_test_server(loop: str, tls_echo_server: Server) -> None:
    """A TLS test server as upstream is reached over TLS, trusting the test CA."""
    with forward(tls_echo_server, tls=True, loop=loop) as proxy:
        assert exchange(proxy.address, b"x" * 100_000, proxy.ssl_context()) == b"x" * 100_000


@pytest.mark.parametrize(("servername", "verdict"), [
    ("localhost", "ok"),
    ("db.internal", "TLS: Hostname mismatch, certificate is not valid for 'db.internal'."),
])  # fmt: skip
def test_upstream_servername_is_the_name_the_certificate_must_carry(
    loop: str, tls_echo_server: Server, servername: str, verdict: str
) -> None:
    with forward(tls_echo_server, upstream_servername=servername, loop=loop) as proxy:
        if verdict == "ok":
            assert exchange(proxy.address, b"named") == b"named"
        else:
            with pytest.raises(ConnectionResetError):
                exchange(proxy.address, b"named")
        (record,) = proxy.wait_connections(1)
    assert record.upstream_ended == ("closed" if verdict == "ok" else f"upstream_failed: {verdict}")


def test_an_untrusted_upstream_resets_the_client_unless_verify_is_off(
    loop: str,
    tls_self_signed_server: Server,
) -> None:
    with forward(tls_self_signed_server, loop=loop) as proxy:
        with pytest.raises(ConnectionResetError):
            exchange(proxy.address, b"trust me")
        (record,) = proxy.wait_connections(1)
    assert record.upstream_ended == "upstream_failed: TLS: self-signed certificate"
    with forward(tls_self_signed_server, upstream_verify=False, loop=loop) as proxy:
        assert exchange(proxy.address, b"trust me") == b"trust me"


def test_a_plaintext_upstream_fails_the_handshake_with_a_reason(loop: str) -> None:
    with serve("http-hello") as upstream, forward(upstream, upstream_tls=True, loop=loop) as proxy:
        with pytest.raises(ConnectionResetError):
            exchange(proxy.address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", answer_size=1)
        (record,) = proxy.wait_connections(1)
    assert str(record.upstream_ended).startswith("upstream_failed: TLS: ")


def test_an_upstreams_fin_ends_a_tls_clients_connection_after_its_bytes(loop: str) -> None:
    """asyncio's TLS has no half-close: the upstream's FIN becomes close_notify, after
    every byte it sent, and the upstream is closed with a FIN (no RST)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with forward(listener.getsockname(), tls=True, loop=loop) as proxy:
            raw = socket.create_connection(proxy.address, timeout=10)
            with proxy.ssl_context().wrap_socket(raw, server_hostname="localhost") as client:
                upstream, _ = listener.accept()
                with upstream:
                    upstream.sendall(b"last words" * 10_000)
                    upstream.shutdown(socket.SHUT_WR)
                    received = b""
                    while chunk := client.recv(65536):
                        received += chunk
                    assert received == b"last words" * 10_000
                    assert upstream.recv(1) == b""  # a FIN, not a reset
            (record,) = proxy.wait_connections(1)
    assert (record.bytes_out, record.upstream_ended) == (100_000, "closed")


@pytest.mark.parametrize("toxic", [
    {"type": "latency", "latency": 100},
    {"type": "bandwidth", "rate": 1},  # 10-byte pieces: the reply is still held at the close
    {"type": "slicer", "average_size": 16, "size_variation": 4, "delay": 2_000},
], ids=lambda toxic: toxic["type"])  # fmt: skip
def test_a_tls_upstreams_last_reply_outlives_its_close_behind_a_downstream_toxic(
    loop: str, toxic: dict[str, Any]
) -> None:
    """A TLS upstream closes right after its close_notify (asyncio's TLS has no
    half-close): its last reply, still held by the toxic, reaches the client whole and
    before the client's EOF."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with serve("http-hello", tls=True) as upstream, forward(upstream, loop=loop) as proxy:
        proxy.add_toxic(**toxic)
        answer = exchange(proxy.address, request, answer_size=1 << 20)  # read to the EOF
        (record,) = proxy.wait_connections(1)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nHello from portd\n")
    assert (record.bytes_out, record.upstream_ended) == (len(answer), "closed")
