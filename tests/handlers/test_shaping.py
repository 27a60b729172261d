"""latency, bandwidth and slicer: exact schedules on a fake clock (seeded, reproducible,
flow-controlled), then each proven with a real client on a real port."""

from __future__ import annotations

import itertools
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from portd.config import parse_config
from portd.errors import ConfigError
from portd.handlers.base import StreamSession
from portd.handlers.registry import load_handler
from portd.handlers.shaping import QUEUE_HIGH_BYTES, PacedSession, PacingHandler
from portd.options import defaults
from portd.testing import Server, ServerFactory
from portd.testing.kit import FakeConnection, ManualClock
from tests.support import Daemon


class TimedConnection(FakeConnection):
    """Records each write, and how the connection ended, with the manual time of it."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.timeline: list[tuple[float, bytes]] = []
        self.ended: list[tuple[float, str]] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.timeline.append((round(self.clock.now - 100.0, 6), data))

    def write_eof(self) -> None:
        self.ended.append((round(self.clock.now - 100.0, 6), "eof"))

    def close(self) -> None:
        super().close()
        self.ended.append((round(self.clock.now - 100.0, 6), "close"))


def paced(name: str, **options: Any) -> tuple[PacedSession, TimedConnection, ManualClock]:
    """An echo behind ``name`` on a fake clock."""
    handler_class = load_handler(name)
    assert issubclass(handler_class, PacingHandler)
    handler = handler_class({**defaults(handler_class.options), **options})
    clock = ManualClock(100.0)
    conn = TimedConnection(clock)
    return handler.open_paced(conn, clock), conn, clock


def test_latency_delays_each_reply_and_keeps_their_order() -> None:
    session, conn, clock = paced("latency", delay_s=0.25)
    session.data_received(b"a")
    clock.now += 0.1
    session.data_received(b"b")
    assert conn.chunks == []
    clock.run()
    assert conn.timeline == [(0.25, b"a"), (0.35, b"b")]


def test_latency_jitter_is_the_same_for_the_same_seed_and_never_reorders() -> None:
    def timeline(seed: int) -> list[tuple[float, bytes]]:
        session, conn, clock = paced("latency", delay_s=0.1, jitter_s=0.5, seed=seed)
        for byte in b"abcdefgh":
            session.data_received(bytes([byte]))
            clock.now += 0.01
        clock.run()
        return conn.timeline

    first = timeline(7)
    assert timeline(7) == first
    assert timeline(8) != first
    assert b"".join(data for _, data in first) == b"abcdefgh"
    times = [when for when, _ in first]
    assert times == sorted(times)
    assert all(0.1 <= when - 0.01 * index <= 0.6 for index, when in enumerate(times))


def test_bandwidth_releases_the_configured_rate_in_ten_ms_pieces() -> None:
    session, conn, clock = paced("bandwidth", bytes_per_s=10_000)
    session.data_received(b"x" * 1000)
    clock.run()
    assert [len(data) for _, data in conn.timeline] == [100] * 10
    assert [when for when, _ in conn.timeline] == pytest.approx([i * 0.01 for i in range(10)])


def test_slicer_pieces_are_seeded_and_spaced() -> None:
    def pieces(seed: int) -> list[tuple[float, bytes]]:
        session, conn, clock = paced("slicer", piece_bytes=4, delay_s=0.01, seed=seed)
        session.data_received(bytes(range(40)))
        clock.run()
        return conn.timeline

    first = pieces(1)
    assert pieces(1) == first
    assert pieces(2) != first
    assert b"".join(data for _, data in first) == bytes(range(40))
    assert {len(data) for _, data in first} <= {1, 2, 3, 4}
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(first)]
    assert gaps == pytest.approx([0.01] * len(gaps))


def test_eof_closes_only_after_the_delayed_replies() -> None:
    session, conn, clock = paced("latency", delay_s=1.0)
    session.data_received(b"last words")
    assert session.eof_received() is True  # the transport must stay open meanwhile
    assert conn.ended == []
    clock.run()
    assert conn.timeline == [(1.0, b"last words")]
    assert conn.ended == [(1.0, "close")]


def test_a_full_queue_pauses_the_inner_echo_until_it_drains() -> None:
    """A client that sends faster than the pacing must not make the server grow."""
    session, conn, clock = paced("bandwidth", bytes_per_s=1_000_000)  # 10 kB pieces
    size = QUEUE_HIGH_BYTES + 10_001  # the first piece goes at once; one byte too many stays
    session.data_received(b"x" * size)
    assert conn.reading is False  # echo was told to stop reading
    clock.run()
    assert conn.reading is True
    assert sum(len(data) for _, data in conn.timeline) == size


def test_nothing_is_released_while_the_kernel_buffer_is_full() -> None:
    session, conn, clock = paced("slicer", piece_bytes=1, delay_s=0)
    session.pause_writing()
    session.data_received(b"abc")
    clock.run()
    assert conn.chunks == []
    session.resume_writing()
    clock.run()
    assert conn.written == b"abc"


def test_connection_lost_cancels_the_timer() -> None:
    session, conn, clock = paced("latency", delay_s=1.0)
    session.data_received(b"never sent")
    session.connection_lost(None)
    clock.run()
    assert conn.chunks == []
    assert isinstance(session.inner, StreamSession)


def roundtrip_s(server: Server, data: bytes = b"ping") -> float:
    with socket.create_connection(server.address, timeout=5) as client:
        started = time.monotonic()
        client.sendall(data)
        assert client.recv(len(data)) == data
        return time.monotonic() - started


def test_latency_is_felt_by_a_real_client(portd_server: ServerFactory) -> None:
    server = portd_server("latency", delay_s=0.2)
    assert 0.2 <= roundtrip_s(server) < 2.0


def test_a_client_timeout_below_the_latency_times_out(latency_server: Server) -> None:
    with socket.create_connection(latency_server.address, timeout=0.02) as client:
        client.sendall(b"ping")
        with pytest.raises(TimeoutError):
            client.recv(4)
        client.settimeout(5)
        assert client.recv(4) == b"ping"  # late, but it comes


def test_latency_wraps_http_hello(portd_server: ServerFactory) -> None:
    server = portd_server("latency", wraps="http-hello", delay_s=0.2)
    started = time.monotonic()
    with urllib.request.urlopen(server.url, timeout=5) as response:  # noqa: S310 - http://
        assert response.read() == b"Hello from portd\n"
    assert time.monotonic() - started >= 0.2


def test_throttled_throughput_is_within_20_percent_of_the_rate(
    portd_server: ServerFactory,
) -> None:
    rate = 200_000
    server = portd_server("bandwidth", bytes_per_s=rate)
    with socket.create_connection(server.address, timeout=5) as client:
        sender = threading.Thread(target=_send_until_closed, args=(client,), daemon=True)
        sender.start()
        received = len(client.recv(65536))
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < 1.0:
            received += len(client.recv(65536))
        client.shutdown(socket.SHUT_RDWR)
        sender.join(5)
    assert received / elapsed == pytest.approx(rate, rel=0.2)


def _send_until_closed(client: socket.socket) -> None:
    try:
        while True:
            client.sendall(b"y" * 65536)
    except OSError:
        return


def test_slicer_reply_arrives_in_many_pieces(portd_server: ServerFactory) -> None:
    server = portd_server("slicer", piece_bytes=2, delay_s=0.02)
    with socket.create_connection(server.address, timeout=5) as client:
        client.sendall(b"0123456789")
        client.shutdown(socket.SHUT_WR)
        pieces = list(iter(lambda: client.recv(64), b""))
    assert b"".join(pieces) == b"0123456789"
    assert len(pieces) >= 3  # at most 2 bytes per piece, 20 ms apart


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"handler": "latency", "delay_s": -1}, "delay_s = -1: expected a number from 0 to 3600"),
        ({"handler": "bandwidth", "bytes_per_s": 0}, "expected at least 1 byte per second"),
        ({"handler": "slicer", "piece_bytes": 0}, "piece_bytes = 0: expected an integer >= 1"),
        ({"handler": "latency", "seed": "x"}, 'seed = "x": expected an integer'),
    ],
)
def test_shaping_options_are_checked_at_config_load(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"listener": [{"bind": "127.0.0.1:0", **table}]}, "t.toml")
    assert message in raised.value.lines[0]


def test_sizes_take_units() -> None:
    table = {"bind": "127.0.0.1:0", "handler": "bandwidth", "bytes_per_s": "10KiB"}
    (listener,) = parse_config({"listener": [table]}, "t.toml").listeners
    assert listener.settings["bytes_per_s"] == 10240


def test_slicer_without_a_delay_does_bounded_work_per_turn_and_copies_nothing() -> None:
    """delay_s = 0 sent every piece in one call, copying the rest of the reply each time:
    the loop was held ~1.8 s per 256 KiB."""
    from portd.handlers.shaping import PIECES_PER_TURN

    session, conn, clock = paced("slicer", piece_bytes=1, delay_s=0)
    data = bytes(range(256)) * 256
    session.data_received(data)
    assert len(conn.chunks) == PIECES_PER_TURN  # then it yielded...
    assert [t.when for t in clock.timers if not t.cancelled] == [clock.now]  # ...due at once
    clock.run()
    assert conn.written == data
    assert all(len(piece) == 1 for piece in conn.chunks)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_slicer_without_a_delay_leaves_other_clients_served_at_once(
    start_daemon: Callable[..., Daemon], loop: str
) -> None:
    """Ordering, not timing: while one client's 256 KiB goes out a byte at a time, another
    client's echoes keep coming back (the loop held for ~1.8 s and then sent it all).

    A daemon of its own, not an in-process test server: there the server's thread and
    this one share the GIL, and uvloop's thread, busy slicing, kept it for hundreds of
    milliseconds at a time (3 echoes in a second), which says nothing of the loop."""
    daemon = start_daemon(
        f'[daemon]\nloop = "{loop}"\n[[listener]]\nname = "s"\nbind = "127.0.0.1:0"\n'
        'handler = "slicer"\npiece_bytes = 1\ndelay_s = 0\n'
    )
    address = ("127.0.0.1", daemon.ready()["s"])
    payload = bytes(256 << 10)
    with (
        socket.create_connection(address, timeout=30) as bulk,
        socket.create_connection(address, timeout=30) as probe,
    ):
        bulk.sendall(payload)
        bulk.recv(1)  # the slicing is under way
        received, answered_meanwhile = 1, 0
        while received < len(payload):
            probe.sendall(b"p")
            assert probe.recv(1) == b"p"
            answered_meanwhile += 1
            received += len(bulk.recv(1 << 20))
    assert answered_meanwhile >= 10, f"only {answered_meanwhile} echoes during the slicing"
