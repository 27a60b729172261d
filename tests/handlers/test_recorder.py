"""recorder: what peers send lands in the records (bounded), and the optional reply
comes when asked (connect, first data, eof), over TCP and UDP."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest

from portd.endpoints.inet import inet_peer
from portd.handlers.recorder import RecorderHandler, RecorderSession
from portd.options import defaults
from portd.testing import Server, ServerFactory, serve
from portd.testing.kit import FakeConnection, RecordingEndpoint


def session(**options: Any) -> tuple[RecorderSession, FakeConnection]:
    conn = FakeConnection()
    handler = RecorderHandler({**defaults(RecorderHandler.options), **options})
    opened = handler.open_session(conn)
    assert isinstance(opened, RecorderSession)
    return opened, conn


def test_keeps_at_most_max_bytes_and_never_replies_by_default() -> None:
    recorder, conn = session(max_bytes=5)
    recorder.data_received(b"abc")
    recorder.data_received(b"defgh")
    assert recorder.received == b"abcde"
    assert conn.chunks == []


@pytest.mark.parametrize(
    ("reply_after", "before_data", "after_data", "after_eof"),
    [("connect", 1, 1, 1), ("data", 0, 1, 1), ("eof", 0, 0, 1)],
)
def test_the_reply_is_sent_once_at_its_moment(
    reply_after: str, before_data: int, after_data: int, after_eof: int
) -> None:
    recorder, conn = session(reply="ok", reply_after=reply_after)
    assert len(conn.chunks) == before_data
    recorder.data_received(b"1")
    recorder.data_received(b"2")
    assert len(conn.chunks) == after_data
    assert recorder.eof_received() is False
    assert conn.chunks == [b"ok"] * after_eof


def test_close_after_reply() -> None:
    _recorder, conn = session(reply="bye", reply_after="connect", close_after_reply=True)
    assert (conn.chunks, conn.closed) == ([b"bye"], True)


def test_udp_replies_to_every_datagram_when_a_reply_is_set() -> None:
    endpoint = RecordingEndpoint()
    RecorderHandler({**defaults(RecorderHandler.options), "reply": "r"}).datagram_received(
        b"q", inet_peer(("127.0.0.1", 9)), endpoint
    )
    assert endpoint.sent == [(b"r", inet_peer(("127.0.0.1", 9)))]


def test_records_what_a_real_client_sent(recorder_server: Server) -> None:
    with socket.create_connection(recorder_server.address, timeout=5) as client:
        client.sendall(b"first ")
        client.sendall(b"second")
    (record,) = recorder_server.wait_connections(1)
    assert record.received == b"first second"
    assert (record.bytes_in, record.bytes_out, record.how_it_ended) == (12, 0, "closed")


def test_replies_like_a_tiny_http_server(portd_server: ServerFactory) -> None:
    reply = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    server = portd_server("recorder", reply=reply, close_after_reply=True)
    with socket.create_connection(server.address, timeout=5) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(1024) == reply.encode()
        assert client.recv(1) == b""
    assert server.wait_connections(1)[0].received == b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def test_records_datagrams_with_their_peer() -> None:
    with (
        serve("recorder", protocol="udp", reply="got it", amplify=True) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(5)
        client.bind(("127.0.0.1", 0))
        peer = f"127.0.0.1:{client.getsockname()[1]}"
        for payload in (b"one", b"", b"three"):
            client.sendto(payload, server.address)
            assert client.recv(64) == b"got it"
        records = server.wait_datagrams(3)
    assert [(r.peer, r.payload) for r in records] == [(peer, b"one"), (peer, b""), (peer, b"three")]


LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


@LOOPS
def test_a_udp_reply_larger_than_the_request_is_not_sent(loop: str) -> None:
    """A 1,000-byte reply answered every 1-byte datagram: a spoofed source's amplifier."""
    reply = "r" * 1000
    with (
        serve("recorder", protocol="udp", reply=reply, loop=loop) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(5)
        for _ in range(20):
            client.sendto(b"?", server.address)
        client.sendto(b"x" * 1000, server.address)  # as large as the reply: answered
        assert client.recv(2000) == reply.encode()
        assert len(server.wait_datagrams(21)) == 21  # recorded all the same
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(2000)  # the 20 small requests got nothing


@LOOPS
def test_amplify_sends_larger_replies_at_most_reply_rate_per_source(loop: str) -> None:
    with (
        serve(
            "recorder", protocol="udp", reply="r" * 1000, amplify=True, reply_rate=5, loop=loop
        ) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other,
    ):
        other.bind(("127.0.0.2", 0))
        for _ in range(50):
            client.sendto(b"?", server.address)
        other.sendto(b"?", server.address)
        server.wait_datagrams(51)
        other.settimeout(5)
        assert other.recv(2000) == b"r" * 1000  # another source has its own budget
        client.setblocking(False)
        replies = 0
        with contextlib.suppress(BlockingIOError):
            while client.recv(2000):
                replies += 1
    assert 5 <= replies <= 7  # the burst, plus what the rate refilled meanwhile


def test_dropped_replies_are_logged_with_a_true_count() -> None:
    endpoint = RecordingEndpoint()
    handler = RecorderHandler({**defaults(RecorderHandler.options), "reply": "longer"})
    for _ in range(30):
        handler.datagram_received(b"?", inet_peer(("127.0.0.1", 9999)), endpoint)  # noqa: fixed-port
    handler.close()
    assert endpoint.sent == []
    dropped = endpoint.log.named("reply_dropped")
    assert {e["reason"] for e in dropped} == {"larger_than_request"}
    assert sum(e["count"] for e in dropped) == 30
