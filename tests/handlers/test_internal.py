"""inetd's internal services against their RFCs' examples (863 discard, 864 chargen, 867
daytime, 868 time), over TCP and UDP with ``nc`` too, their UDP safety defaults, and
chargen against a client that never reads, on both loops."""

from __future__ import annotations

import calendar
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable

import pytest

from portd.endpoints.inet import inet_peer
from portd.errors import ConfigError
from portd.handlers.internal import (
    CHARGEN_CHUNK,
    TURN,
    ChargenHandler,
    DaytimeHandler,
    TimeHandler,
    daytime_line,
    time_bytes,
)
from portd.testing import FakeConnection, RecordingEndpoint, serve
from tests.support import Daemon, require_tool

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
WAIT_S = 10.0


def utc(*fields: int) -> int:
    """Seconds since 1970 of (year, month, day[, hour, minute, second]) in UTC."""
    year, month, day, hour, minute, second = (*fields, 0, 0, 0)[:6]
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


@pytest.mark.parametrize(
    ("seconds_since_1900", "date"),
    [(2_208_988_800, (1970, 1, 1)), (2_398_291_200, (1976, 1, 1)),
     (2_524_521_600, (1980, 1, 1)), (2_629_584_000, (1983, 5, 1))],
)  # fmt: skip
def test_time_is_the_rfc_868_examples(seconds_since_1900: int, date: tuple[int, int, int]) -> None:
    assert time_bytes(utc(*date)) == struct.pack("!I", seconds_since_1900)


def test_time_wraps_after_2036_as_32_bits_do() -> None:
    assert time_bytes(utc(2036, 2, 7, 6, 28, 16)) == b"\0\0\0\0"


def test_daytime_follows_rfc_867s_syntax() -> None:
    """ "Weekday, Month Day, Year Time-Zone", as the RFC's example, in UTC."""
    assert (
        daytime_line(utc(1982, 2, 22, 17, 37, 43)) == b"Monday, February 22, 1982 17:37:43-UTC\r\n"
    )


def test_chargen_is_rfc_864s_rotating_pattern() -> None:
    lines = TURN.split(b"\r\n")[:-1]
    assert len(lines) == 95
    assert lines[0] == b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg"
    assert lines[1] == bytes(range(33, 33 + 72))
    assert lines[94] == b"~" + bytes(range(32, 32 + 71))
    assert all(len(line) == 72 for line in lines)
    assert CHARGEN_CHUNK.startswith(TURN + TURN)


def test_the_tcp_answers_close_after_themselves() -> None:
    for handler, answer in ((DaytimeHandler, daytime_line(0)), (TimeHandler, time_bytes(0))):
        service = handler({})
        service.clock = lambda: 0.0
        conn = FakeConnection()
        service.open_session(conn)
        assert (bytes(conn.written), conn.ending) == (answer, "close")


def test_udp_daytime_and_time_answer_any_datagram_even_an_empty_one() -> None:
    peer = inet_peer(("192.0.2.7", 40000))
    for handler, answer in ((DaytimeHandler, daytime_line(0)), (TimeHandler, time_bytes(0))):
        service = handler({})
        service.clock = lambda: 0.0
        endpoint = RecordingEndpoint()
        service.datagram_received(b"", peer, endpoint)
        assert endpoint.sent == [(answer, peer)]


def test_udp_chargen_is_refused_unless_amplification_is_allowed() -> None:
    with pytest.raises(ConfigError, match="set allow_amplification = true to serve it"):
        serve("chargen", protocol="udp").__enter__()


def test_udp_chargen_answers_each_source_at_most_reply_rate_times() -> None:
    service = ChargenHandler({"allow_amplification": True, "reply_rate": 2.0})
    endpoint = RecordingEndpoint()
    peer, other = inet_peer(("192.0.2.7", 40000)), inet_peer(("192.0.2.8", 40000))
    for _ in range(5):
        service.datagram_received(b"", peer, endpoint)
    service.datagram_received(b"", other, endpoint)
    assert [to for _, to in endpoint.sent] == [peer, peer, other]
    assert all(len(data) <= 512 and TURN.startswith(data) for data, _ in endpoint.sent)
    assert endpoint.log.named("reply_dropped")[0]["reason"] == "reply_rate"


@LOOPS
def test_tcp_services_over_real_sockets(loop: str) -> None:
    with serve("time", loop=loop) as server, socket.create_connection(server.address, 5) as c:
        (seconds,) = struct.unpack("!I", c.makefile("rb").read())
    assert abs(seconds - 2_208_988_800 - time.time()) < 5
    with serve("daytime", loop=loop) as server, socket.create_connection(server.address, 5) as c:
        assert re.fullmatch(rb"[A-Z][a-z]+day, [A-Z][a-z]+ \d\d, \d{4} \d\d:\d\d:\d\d-UTC\r\n",
                            c.makefile("rb").read())  # fmt: skip
    with serve("discard", loop=loop) as server, socket.create_connection(server.address, 5) as c:
        c.sendall(b"x" * 100_000)
        c.shutdown(socket.SHUT_WR)
        assert c.recv(10) == b""
        (record,) = server.wait_connections(1)
    assert (record.bytes_in, record.bytes_out) == (100_000, 0)


@LOOPS
def test_chargen_streams_the_pattern_to_a_reader(loop: str) -> None:
    with serve("chargen", loop=loop) as server, socket.create_connection(server.address, 5) as c:
        received = bytearray()
        while len(received) < 3 << 20:
            received += c.recv(1 << 16)
    assert bytes(received[: len(TURN) * 3]) == TURN * 3
    assert bytes(received) == (TURN * (len(received) // len(TURN) + 1))[: len(received)]


@LOOPS
def test_chargen_against_a_client_that_never_reads(loop: str) -> None:
    """Flow control: portd stops at what the kernel buffers hold plus its own mark, then
    send_timeout_s cuts the client (an RST); it never queues more."""
    with serve("chargen", send_timeout_s=0.5, loop=loop) as server:
        client = socket.create_connection(server.address, 5)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        try:
            (record,) = server.wait_connections(1, timeout_s=WAIT_S)
        finally:
            client.close()
    assert record.how_it_ended == "send_timeout"
    assert record.bytes_out < 16 << 20  # kernel buffers and one high-water mark, not more


def test_the_daemon_serves_them_to_nc_over_udp(start_daemon: Callable[..., Daemon]) -> None:
    nc = require_tool("nc")
    tables = "".join(
        f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nprotocol = "udp"\n'
        f'handler = "{name}"\n' + extra
        for name, extra in (("daytime", ""), ("time", ""), ("discard", ""),
                            ("chargen", "allow_amplification = true\n"))
    )  # fmt: skip
    daemon = start_daemon(tables)
    ports = daemon.ready()

    def ask(name: str) -> bytes:
        argv = [nc, "-u", "-w", "1", "127.0.0.1", str(ports[name])]
        done = subprocess.run(argv, input=b"?\n", capture_output=True, timeout=30, check=False)
        return done.stdout

    assert re.fullmatch(rb"[A-Z][a-z]+day, .* \d\d:\d\d:\d\d-UTC\r\n", ask("daytime"))
    assert len(ask("time")) == 4
    assert ask("discard") == b""
    assert TURN.startswith(ask("chargen"))


def test_udp_from_a_low_source_port_is_not_answered() -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("binding a port below 1024 needs root")
    with (
        serve("time", protocol="udp") as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c,
    ):
        c.bind(("127.0.0.1", 0))
        with low_port_socket() as low:
            low.sendto(b"", server.address)
            c.settimeout(WAIT_S)
            c.sendto(b"", server.address)  # the same from a high port is answered
            assert len(c.recvfrom(10)[0]) == 4
            # Served in order on one socket: an answer to the low port came before that.
            low.setblocking(False)
            with pytest.raises(BlockingIOError):
                low.recvfrom(10)


def low_port_socket() -> socket.socket:
    """A UDP socket on a port below 1024 that nothing here holds (the first that binds)."""
    for port in range(1023, 511, -1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        return sock
    pytest.skip("no port from 512 to 1023 is free here")


def test_a_source_past_the_default_rate_is_not_answered() -> None:
    with (
        serve("daytime", protocol="udp") as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c,
    ):
        c.settimeout(0.3)
        answered = 0
        for _ in range(40):
            c.sendto(b"", server.address)
        try:
            while True:
                c.recvfrom(100)
                answered += 1
        except TimeoutError:
            pass
    assert 20 <= answered < 40  # a burst of 20 (and what the refill adds), not all 40
