"""http-hello under abuse in a real `portd serve`, on both event loops: a flood of empty
lines must not starve other listeners, a large body must not be copied into every
non-reading client's queue, and a silent connection is closed without an answer while
a head left unfinished gets 408."""

from __future__ import annotations

import select
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import Daemon

StartDaemon = Callable[..., Daemon]
LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
FLOOD_S = 2.0


def config(loop: str, http: str = "", echo: bool = False) -> str:
    text = f'[daemon]\nloop = "{loop}"\n[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\n'
    text += f'handler = "http-hello"\n{http}\n'
    if echo:
        text += '[[listener]]\nname = "echo"\nbind = "127.0.0.1:0"\nhandler = "echo"\n'
    return text


def flood_empty_lines(port: int, stop: threading.Event) -> None:
    """Send CRLF forever, reconnecting whenever portd closes the connection."""
    chunk = b"\r\n" * 32768
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                while not stop.is_set():
                    sock.sendall(chunk)
        except OSError:
            continue


@pytest.fixture
def floods() -> Iterator[Callable[[int], None]]:
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(port: int) -> None:
        for _ in range(2):
            thread = threading.Thread(target=flood_empty_lines, args=(port, stop), daemon=True)
            thread.start()
            threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(10)


@LOOPS
def test_a_flood_of_empty_lines_starves_no_listener(
    start_daemon: StartDaemon, floods: Callable[[int], None], loop: str
) -> None:
    """Two connections sending CRLF forever pushed every listener's latency to 0.7-3.2 s."""
    daemon = start_daemon(config(loop, echo=True))
    ports = daemon.ready()
    with socket.create_connection(("127.0.0.1", ports["web"]), timeout=5) as sock:
        sock.sendall(b"\r\n" * 9 + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    floods(ports["web"])
    latencies = []
    with socket.create_connection(("127.0.0.1", ports["echo"]), timeout=10) as probe:
        deadline = time.monotonic() + FLOOD_S
        while time.monotonic() < deadline:
            started = time.monotonic()
            probe.sendall(b"p")
            assert probe.recv(1) == b"p"
            latencies.append(time.monotonic() - started)
    assert statistics.median(latencies) < 0.05, statistics.median(latencies)
    assert max(latencies) < 0.5, max(latencies)


@LOOPS
def test_a_large_body_is_not_copied_into_every_stalled_clients_queue(
    start_daemon: StartDaemon, tmp_path: Path, loop: str
) -> None:
    """asyncio: an 8 MiB body and 200 clients that never read took RSS from 42 to 1,082 MiB."""
    body = "x" * (8 << 20)
    daemon = start_daemon(config(loop, f'body = "{body}"\nheader_timeout_s = 60'))
    port = daemon.ready()["web"]
    process = psutil.Process(daemon.proc.pid)
    rss_before = process.memory_info().rss
    clients = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            clients.append(sock)
        for sock in clients:  # every answer has started: its queue is as full as it gets
            assert select.select([sock], [], [], 10)[0], "no answer began"
        growth_mib = (process.memory_info().rss - rss_before) / (1 << 20)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as reader:
            reader.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            received = b""
            while chunk := reader.recv(1 << 20):
                received += chunk
    finally:
        for sock in clients:
            sock.close()
    assert growth_mib < 100, f"RSS grew by {growth_mib:.0f} MiB"
    head, _, got = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {len(body)}\r\n".encode() in head + b"\r\n"
    assert got == body.encode()


@LOOPS
def test_silence_is_closed_without_an_answer_and_an_unfinished_head_gets_408(
    start_daemon: StartDaemon, loop: str
) -> None:
    """What the README table says: 408 for a head begun and not finished in time; a
    connection that never sent a byte is closed without one, as nginx does."""
    daemon = start_daemon(config(loop, "header_timeout_s = 0.3"))
    port = daemon.ready()["web"]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as silent,
        socket.create_connection(("127.0.0.1", port), timeout=10) as slow,
    ):
        slow.sendall(b"GET / HTTP/1.1\r\nHost:")
        assert silent.recv(64) == b""
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"Connection: close\r\n" in answer
