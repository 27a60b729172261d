"""http-hello in a real `portd serve` over loopback: keep-alive and pipelining, the
header deadline against a slow client, the idle timeout, a client that never reads,
draining on SIGTERM, and interop with curl."""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.handlers.test_http_hello import Response, read_responses
from tests.support import Daemon, flood_without_reading, require_tool

StartDaemon = Callable[..., Daemon]
LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BODY = b"Hello from portd\n"


def http_config(loop: str = "auto", **options: float) -> str:
    lines = [f'[daemon]\nloop = "{loop}"\n[[listener]]\nname = "web"\nbind = "127.0.0.1:0"']
    lines.append('handler = "http-hello"')
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def receive(sock: socket.socket, count: int) -> list[Response]:
    """Read until ``count`` complete responses have arrived (GET bodies included)."""
    data = b""
    while True:
        responses = read_responses(data) if data.endswith((BODY, b"\r\n\r\n")) else []
        if len(responses) >= count:
            return responses
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@LOOPS
def test_keep_alive_and_pipelined_requests_over_a_real_socket(
    start_daemon: StartDaemon, loop: str
) -> None:
    daemon = start_daemon(http_config(loop))
    port = daemon.ready()["web"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(GET + HEAD + GET)
        assert [(r.status, r.body) for r in receive(sock, 3)] == [
            (200, BODY),
            (200, None),
            (200, BODY),
        ]
        sock.sendall(GET)
        (again,) = receive(sock, 1)
        assert (again.status, again.body, "connection" in again.headers) == (200, BODY, False)
    closed = daemon.wait_for("connection_closed")
    assert closed["bytes_in"] == 4 * len(GET) - len(GET) + len(HEAD)


@LOOPS
def test_a_client_sending_a_byte_a_second_gets_408_at_the_header_deadline(
    start_daemon: StartDaemon, loop: str
) -> None:
    daemon = start_daemon(http_config(loop, header_timeout_s=1))
    port = daemon.ready()["web"]
    started = time.monotonic()  # before the connect: the header deadline counts from accept
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for byte in GET:
            sock.send(bytes([byte]))
            if select.select([sock], [], [], 1.0)[0]:  # the pace of the slow client
                break
        else:
            pytest.fail("the whole head went through a byte a second")
        elapsed = time.monotonic() - started
        (response,) = read_responses(read_to_eof(sock))
    assert response.status == 408
    assert response.headers["connection"] == "close"
    assert 0.9 <= elapsed <= 2.5, elapsed


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout_s(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(http_config(keepalive_timeout_s=0.5))
    port = daemon.ready()["web"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        asked = time.monotonic()  # before the request: the keep-alive clock starts at the answer
        sock.sendall(GET)
        assert receive(sock, 1)[0].status == 200
        assert read_to_eof(sock) == b""
        idle = time.monotonic() - asked
    assert 0.45 <= idle <= 2.0, idle


def test_a_client_that_pipelines_and_never_reads_cannot_grow_the_daemon(
    start_daemon: StartDaemon,
) -> None:
    """portd stops reading once its send queue is full: requests wait in the kernel."""
    daemon = start_daemon(http_config(header_timeout_s=30))
    port = daemon.ready()["web"]
    sent, rss_growth = flood_without_reading(daemon.proc.pid, port, GET * 1800)
    assert sent < 64 << 20, f"{sent} bytes of requests accepted from a peer that never reads"
    assert rss_growth < 16 << 20, f"daemon grew by {rss_growth} bytes"


def test_a_stalled_reader_is_aborted_after_header_timeout_s(start_daemon: StartDaemon) -> None:
    """Answers pile up in portd's send queue; it waits header_timeout_s, then aborts."""
    daemon = start_daemon(http_config(header_timeout_s=1))
    port = daemon.ready()["web"]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        requests = GET * 20000  # 3.2 MB of answers, never read
        started = time.monotonic()
        sent = 0
        with contextlib.suppress(OSError):  # the abort may come while this still sends
            while sent < len(requests) and select.select([], [sock], [], 0.5)[1]:
                sent += sock.send(requests[sent:])
        closed = daemon.wait_for("connection_closed", timeout=10)
        elapsed = time.monotonic() - started
    assert closed["bytes_out"] > 1 << 20  # it had answered plenty before it gave up
    assert 0.9 <= elapsed <= 5, elapsed


def test_a_client_still_sending_a_body_after_an_error_is_not_reset(
    start_daemon: StartDaemon,
) -> None:
    """After an error portd half-closes and drops input until the peer is done, so the
    peer can finish sending (a close with unread input would reset it mid-send)."""
    daemon = start_daemon(http_config())
    port = daemon.ready()["web"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 600000\r\n\r\n")
        sock.sendall(b"x" * 300_000)
        assert select.select([sock], [], [], 10)[0], "no answer"
        sock.sendall(b"x" * 300_000)  # the rest of the body, after the 405 arrived
        sock.shutdown(socket.SHUT_WR)
        (response,) = read_responses(read_to_eof(sock))
    assert response.status == 405


@LOOPS
def test_sigterm_closes_idle_connections_and_finishes_one_in_flight_with_close(
    start_daemon: StartDaemon, loop: str
) -> None:
    daemon = start_daemon(http_config(loop))
    port = daemon.ready()["web"]
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    busy = socket.create_connection(("127.0.0.1", port), timeout=10)
    with idle, busy:
        idle.sendall(GET)
        receive(idle, 1)
        busy.sendall(GET[:-2])  # the head is not complete yet
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_for("shutdown_started")["connections"] == 2
        assert read_to_eof(idle) == b""
        busy.sendall(b"\r\n")
        (response,) = read_responses(read_to_eof(busy))
    assert (response.status, response.body) == (200, BODY)
    assert response.headers["connection"] == "close"
    assert daemon.wait() == 0
    assert daemon.wait_for("shutdown_complete")["aborted"] == 0


# Interop with curl.


@pytest.fixture
def curl_url(start_daemon: StartDaemon) -> str:
    require_tool("curl")
    return f"http://127.0.0.1:{start_daemon(http_config()).ready()['web']}/"


def curl(*args: str) -> tuple[int, str, str]:
    """curl's exit code, stdout and stderr, CRLFs kept."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, timeout=30, check=False
    )
    return result.returncode, result.stdout.decode("latin-1"), result.stderr.decode("latin-1")


def head_lines(output: str) -> list[str]:
    """The response head's lines without Date (which changes)."""
    head = output.split("\r\n\r\n", maxsplit=1)[0]
    return [line for line in head.split("\r\n") if not line.startswith("Date:")]


def test_curl_gets_200_with_the_body(curl_url: str) -> None:
    code, out, err = curl("-i", curl_url)
    assert code == 0, err
    assert head_lines(out) == [
        "HTTP/1.1 200 OK",
        "Server: portd/0.1.0.dev0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Length: 17",
    ]
    assert out.endswith("\r\n\r\nHello from portd\n")


def test_curl_head_gets_the_headers_and_no_body(curl_url: str) -> None:
    code, out, err = curl("-I", curl_url)
    assert code == 0, err
    assert head_lines(out)[0] == "HTTP/1.1 200 OK"
    assert out.endswith("Content-Length: 17\r\n\r\n")


def test_curl_http_1_0_is_answered_then_closed(curl_url: str) -> None:
    code, out, err = curl("-i", "--http1.0", curl_url)
    assert code == 0, err
    assert head_lines(out)[-1] == "Connection: close"
    assert out.endswith("\r\n\r\nHello from portd\n")


def test_curl_reuses_the_connection_for_a_second_request(curl_url: str) -> None:
    code, out, err = curl("-o", "/dev/null", "-o", "/dev/null", "-w", "%{num_connects}\n",
                          curl_url, curl_url)  # fmt: skip
    assert code == 0, err
    assert out.split() == ["1", "0"]


def test_curl_post_with_a_big_body_reads_405_with_allow(curl_url: str, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"x" * 1_000_000)
    code, out, err = curl("-i", "-X", "POST", "--data-binary", f"@{body}", curl_url)
    assert code == 0, err
    lines = head_lines(out)
    assert lines[0] == "HTTP/1.1 405 Method Not Allowed"
    assert {"Allow: GET, HEAD", "Connection: close"} <= set(lines)
