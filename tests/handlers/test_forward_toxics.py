"""Every toxic measured on real connections through a forward, targeting, and toxics
changed under load. Timings are measurements with tolerances (the issue's: latency
within 10% or 2 ms, bandwidth within 10%); readiness is never a sleep."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from portd.testing import Proxy, Server, forward, serve

WAIT_S = 10.0
CHUNK_BYTES = 16 << 10
IN_FLIGHT_BYTES = 1 << 20  # per client under load: 4 times a pipe's high-water mark
ROUND_BYTES = 16 << 20  # echoed while each toxic is in force: its pipes fill and pause


@pytest.fixture
def echo_proxy() -> Iterator[tuple[Server, Proxy]]:
    with serve("echo") as echo, forward(echo) as proxy:
        yield echo, proxy


def ping_ms(sock: socket.socket, payload: bytes = b"p") -> float:
    started = time.perf_counter()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += sock.recv(65536)
    return (time.perf_counter() - started) * 1000


def median_ping_ms(sock: socket.socket, count: int = 5) -> float:
    return statistics.median(ping_ms(sock) for _ in range(count))


def least_ping_ms(sock: socket.socket, count: int = 7) -> float:
    """The fastest of ``count`` round trips: a loaded host only ever adds time, so the
    minimum is the steadiest measure of what a toxic adds."""
    return min(ping_ms(sock) for _ in range(count))


@pytest.mark.parametrize("latency_ms", [20, 100])
def test_latency_is_its_milliseconds_within_ten_percent_or_two_ms(
    echo_proxy: tuple[Server, Proxy], latency_ms: int
) -> None:
    _, proxy = echo_proxy
    with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
        base = least_ping_ms(client)
        with proxy.toxic("latency", latency=latency_ms):
            added = least_ping_ms(client) - base
        after = least_ping_ms(client)
    assert latency_ms - 2 <= added <= latency_ms + max(2, latency_ms * 0.1)
    assert after < base + 2  # removed: gone at once


def test_upstream_and_downstream_latency_add_up(echo_proxy: tuple[Server, Proxy]) -> None:
    _, proxy = echo_proxy
    with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
        base = least_ping_ms(client)
        with (
            proxy.toxic("latency", latency=30, stream="upstream"),
            proxy.toxic("latency", latency=20),
        ):
            added = least_ping_ms(client) - base
    assert 48 <= added <= 55


def stream_from_upstream(size: int, **toxic: Any) -> tuple[float, int]:
    """An upstream that sends ``size`` bytes at once; the client's measured rate (bytes
    per second from its first byte to its last) through a bandwidth toxic."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with forward(listener.getsockname()) as proxy:
            proxy.add_toxic("bandwidth", **toxic)
            with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
                server, _ = listener.accept()
                sender = threading.Thread(target=server.sendall, args=(b"b" * size,))
                sender.start()
                first = client.recv(1 << 20)
                started, got = time.perf_counter(), 0
                while got < size - len(first):
                    got += len(client.recv(1 << 20))
                elapsed = time.perf_counter() - started
                sender.join()
                server.close()
    return got / elapsed, len(first) + got


@pytest.mark.parametrize(
    ("rate_kb", "size"), [(10, 12_000), (1000, 600_000), (100_000, 60_000_000)]
)
def test_bandwidth_is_its_rate_within_ten_percent(rate_kb: int, size: int) -> None:
    measured, total = stream_from_upstream(size, rate=rate_kb)
    assert total == size
    assert rate_kb * 1000 * 0.9 <= measured <= rate_kb * 1000 * 1.1


def test_slicer_delivers_pieces_of_the_average_size_plus_or_minus_the_variation(
    echo_proxy: tuple[Server, Proxy],
) -> None:
    _, proxy = echo_proxy
    # 20 ms apart: a client on a loaded host rarely sleeps long enough to read two at once
    proxy.add_toxic("slicer", average_size=200, size_variation=50, delay=20_000)
    with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
        client.sendall(b"s" * 10_000)
        sizes: list[int] = []
        while sum(sizes) < 10_000:
            sizes.append(len(client.recv(65536)))
    assert sum(sizes) == 10_000
    inside = [size for size in sizes[:-1] if 150 <= size <= 250]
    assert len(inside) >= 0.9 * (len(sizes) - 1)  # a loaded client may read two at once
    assert 150 <= statistics.median(sizes) <= 250


@pytest.mark.parametrize("limit", [1, 12_345, 1 << 20])
def test_limit_data_passes_exactly_its_bytes_then_closes(limit: int) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with forward(listener.getsockname()) as proxy:
            proxy.add_toxic("limit_data", bytes=limit)
            with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
                server, _ = listener.accept()
                threading.Thread(target=_send_quietly, args=(server, 4 << 20), daemon=True).start()
                received = 0
                while chunk := client.recv(1 << 20):
                    received += len(chunk)
                server.close()
    assert received == limit


def _send_quietly(sock: socket.socket, size: int) -> None:
    with contextlib.suppress(OSError):  # the proxy closes it once the limit is reached
        sock.sendall(b"L" * size)


def test_reset_peer_is_econnreset_after_its_timeout(echo_proxy: tuple[Server, Proxy]) -> None:
    _, proxy = echo_proxy
    with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
        assert ping_ms(client) < 1000
        started = time.perf_counter()
        proxy.add_toxic("reset_peer", timeout=100)
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    assert 0.09 <= time.perf_counter() - started <= 0.5


def test_timeout_drops_bytes_then_closes(echo_proxy: tuple[Server, Proxy]) -> None:
    _, proxy = echo_proxy
    proxy.add_toxic("timeout", timeout=200)
    started = time.perf_counter()  # before the connect: the toxic's timer starts at accept
    with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
        client.sendall(b"into the void")
        assert client.recv(100) == b""  # nothing came back, then the close
    assert 0.19 <= time.perf_counter() - started <= 0.6


def test_slow_close_delays_the_close(echo_proxy: tuple[Server, Proxy]) -> None:
    _, proxy = echo_proxy
    proxy.add_toxic("slow_close", delay=200)
    with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
        client.sendall(b"bye")
        client.shutdown(socket.SHUT_WR)
        started = time.perf_counter()
        assert client.recv(3) == b"bye"
        assert client.recv(1) == b""
    assert 0.19 <= time.perf_counter() - started <= 0.6


def test_slow_open_delays_the_upstream_connect(echo_proxy: tuple[Server, Proxy]) -> None:
    _, proxy = echo_proxy
    proxy.add_toxic("slow_open", delay=150)
    started = time.perf_counter()  # before the connect: the delay counts from the accept
    with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
        ping_ms(client)
        first = (time.perf_counter() - started) * 1000
        later = least_ping_ms(client, 3)
    assert 148 <= first <= 400
    assert later < 50


@pytest.mark.parametrize(("attribute", "value"), [("after_s", 0.15), ("after_bytes", 1000)])
def test_cut_after_resets_mid_stream(
    echo_proxy: tuple[Server, Proxy], attribute: str, value: float
) -> None:
    _, proxy = echo_proxy
    attributes: dict[str, Any] = {attribute: value}
    proxy.add_toxic("cut_after", **attributes)
    received = 0
    with (  # noqa: PT012 - bytes flow, then the reset comes
        socket.create_connection(proxy.address, timeout=WAIT_S) as client,
        pytest.raises(ConnectionResetError),
    ):
        for _ in range(1000):
            client.sendall(b"c" * 100)
            received += len(client.recv(65536))
            time.sleep(0.001)  # a paced sender: the cut comes mid-stream
    if attribute == "after_bytes":
        assert received <= 1000


def test_toxicity_zero_never_applies_and_one_always(echo_proxy: tuple[Server, Proxy]) -> None:
    _, proxy = echo_proxy
    proxy.add_toxic("latency", latency=200, toxicity=0.0)
    with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
        assert median_ping_ms(client) < 100


def test_nth_hits_only_the_nth_connection(echo_proxy: tuple[Server, Proxy]) -> None:
    _, proxy = echo_proxy
    proxy.add_toxic("latency", latency=150, nth=2)
    times = []
    for _ in range(3):
        with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
            times.append(median_ping_ms(client, 3))
    assert times[0] < 50
    assert times[2] < 50
    assert times[1] >= 148


def test_only_new_leaves_established_connections_alone(echo_proxy: tuple[Server, Proxy]) -> None:
    _, proxy = echo_proxy
    with socket.create_connection(proxy.address, timeout=WAIT_S) as old:
        assert ping_ms(old) < 1000
        proxy.add_toxic("latency", latency=150, only_new=True)
        with socket.create_connection(proxy.address, timeout=WAIT_S) as new:
            assert median_ping_ms(new, 3) >= 148
        assert median_ping_ms(old, 3) < 50


def test_peer_hits_only_that_client_address(echo_proxy: tuple[Server, Proxy]) -> None:
    _, proxy = echo_proxy
    proxy.add_toxic("latency", latency=150, peer="127.0.0.2")
    with socket.create_connection(
        proxy.address, timeout=WAIT_S, source_address=("127.0.0.2", 0)
    ) as hit:
        assert median_ping_ms(hit, 3) >= 148
    with socket.create_connection(proxy.address, timeout=WAIT_S) as spared:
        assert median_ping_ms(spared, 3) < 50


class Progress:
    """Bytes echoed so far across the clients, for waiting on traffic (never a sleep)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.received = 0
        self.streaming = 0

    def add(self, size: int, first: bool) -> None:
        with self.changed:
            self.received += size
            self.streaming += first
            self.changed.notify_all()

    def wait(self, streaming: int, more_than: int, failures: list[BaseException]) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: (
                    bool(failures) or (self.streaming >= streaming and self.received > more_than)
                ),
                WAIT_S * 3,
            ), f"{self.streaming} clients streaming, {self.received} bytes echoed"
        if failures:
            raise failures[0]


async def _stream(
    port: int, stop: threading.Event, progress: Progress, totals: list[tuple[str, str, int]]
) -> None:
    """One client sending numbered chunks and checking the echo, until told to stop.

    At most IN_FLIGHT_BYTES are sent and not yet echoed. Without that bound the bytes in
    flight are bounded only by the kernel's socket buffers, which loopback autotuning
    grows to tens of MB per connection: 50 clients put about 1 GB in them, enough to
    put the host's TCP memory under pressure (tcp_mem) once another test runs beside
    this one; the kernel then drops loopback segments, and a connection waiting on
    retransmission timers that back off exponentially stalls past every timeout (the
    hang CI saw, reproduced with two of these runs side by side).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent, received = hashlib.sha256(), hashlib.sha256()
    count, index, sent_bytes = 0, 0, 0
    echoed = asyncio.Event()

    async def read() -> None:
        nonlocal count
        try:
            while data := await reader.read(65536):
                received.update(data)
                progress.add(len(data), first=not count)
                count += len(data)
                echoed.set()
        finally:
            echoed.set()  # a writer waiting on the echo learns that reading ended

    reading = asyncio.create_task(read())
    while not stop.is_set() and not reading.done():
        if sent_bytes - count > IN_FLIGHT_BYTES - CHUNK_BYTES:
            echoed.clear()
            await echoed.wait()
            continue
        chunk = index.to_bytes(4, "big") * (CHUNK_BYTES // 4)
        index += 1
        sent.update(chunk)
        sent_bytes += len(chunk)
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    await asyncio.wait_for(reading, 30)
    writer.close()
    totals.append((sent.hexdigest(), received.hexdigest(), count))


def test_toxics_change_under_load_without_a_hang_or_a_lost_byte(
    echo_proxy: tuple[Server, Proxy],
) -> None:
    """50 connections stream through the proxy while toxics come and go 30 times, with
    traffic between every change (ROUND_BYTES echoed while each toxic is in force, so
    its pipes fill, pause their source and are taken out holding bytes): each change
    returns within a second, and every byte comes back, in order. The bytes in flight
    are bounded (IN_FLIGHT_BYTES per client, see _stream), not left to the kernel."""
    _, proxy = echo_proxy
    stop = threading.Event()
    progress = Progress()
    totals: list[tuple[str, str, int]] = []

    async def clients() -> None:
        await asyncio.gather(*(_stream(proxy.port, stop, progress, totals) for _ in range(50)))

    failures: list[BaseException] = []

    def run_clients() -> None:
        try:
            asyncio.run(clients())
        except BaseException as exc:  # noqa: BLE001 - the test fails with it, not a wait
            failures.append(exc)
            with progress.changed:
                progress.changed.notify_all()

    runner = threading.Thread(target=run_clients)
    runner.start()
    slowest = 0.0
    try:
        progress.wait(streaming=50, more_than=0, failures=failures)
        for round_ in range(30):
            kind = ("latency", "bandwidth", "slicer")[round_ % 3]
            attributes: dict[str, Any] = {"latency": {"latency": 5}, "bandwidth": {"rate": 5000},
                          "slicer": {"average_size": 512, "delay": 10}}[kind]  # fmt: skip
            started = time.perf_counter()
            proxy.add_toxic(kind, stream=("upstream", "downstream")[round_ % 2], **attributes)
            slowest = max(slowest, time.perf_counter() - started)
            more_than = progress.received + ROUND_BYTES
            progress.wait(streaming=50, more_than=more_than, failures=failures)
            started = time.perf_counter()
            proxy.remove_toxic(proxy.toxics[0].name)
            slowest = max(slowest, time.perf_counter() - started)
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()
    if failures:
        raise failures[0]
    assert len(totals) == 50
    assert all(sent == received and count > 0 for sent, received, count in totals)
    assert slowest < 1.0


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_a_reader_that_stops_still_stops_the_sender_through_a_toxic(stream: str) -> None:
    """A toxic's queue must not make the proxy buffer for a side that does not read:
    the pipe's own flow control and the reader's must both hold the sender."""
    from tests.handlers.test_forward import fill_without_reading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with forward(listener.getsockname()) as proxy:
            proxy.add_toxic("latency", latency=1, stream=stream)
            with socket.create_connection(proxy.address, timeout=WAIT_S) as client:
                server, _ = listener.accept()
                with server:
                    sender = server if stream == "downstream" else client
                    receiver = client if sender is server else server
                    sent = fill_without_reading(sender)
                    assert sent < 64 << 20
                    receiver.settimeout(WAIT_S)
                    got = 0
                    while got < sent:
                        got += len(receiver.recv(1 << 20))
                    assert got == sent
