"""The echo handler over in-memory connections: bytes back, flow control, UDP replies."""

from __future__ import annotations

from typing import Any

import structlog

from portd.handlers.base import Peer
from portd.handlers.echo import EchoHandler, EchoSession


class RecordingConnection:
    """A Connection that records what the session asks of it."""

    conn_id = 1
    peer = "127.0.0.1:1"
    log: Any = structlog.get_logger()
    draining = False

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.closed = True

    def reset(self, reason: str = "") -> None:
        self.abort()

    def write_eof(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class RecordingEndpoint:
    """A DatagramEndpoint that records sends."""

    log: Any = structlog.get_logger()

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Peer]] = []

    def send(self, data: bytes, peer: Peer) -> bool:
        self.sent.append((data, peer))
        return True


def test_every_chunk_is_written_back_unchanged_and_in_order() -> None:
    conn = RecordingConnection()
    session = EchoHandler({}).open_session(conn)
    for chunk in (b"a", b"", b"\x00\xff" * 1000, b"last"):
        session.data_received(chunk)
    assert conn.written == [b"a", b"", b"\x00\xff" * 1000, b"last"]


def test_a_full_write_queue_pauses_reading_until_it_drains() -> None:
    """A peer that sends but never reads must not make the daemon grow."""
    conn = RecordingConnection()
    session = EchoSession(conn)
    session.pause_writing()
    assert conn.reading is False
    session.resume_writing()
    assert conn.reading is True


def test_eof_from_the_peer_closes_after_the_echo_is_flushed() -> None:
    assert EchoSession(RecordingConnection()).eof_received() is False


def test_udp_echo_replies_once_with_the_same_bytes_to_the_sender() -> None:
    endpoint = RecordingEndpoint()
    handler = EchoHandler({})
    handler.datagram_received(b"ping", ("127.0.0.1", 5000), endpoint)
    handler.datagram_received(b"", ("::1", 6000, 0, 0), endpoint)
    assert endpoint.sent == [(b"ping", ("127.0.0.1", 5000)), (b"", ("::1", 6000, 0, 0))]


def test_echo_declares_both_protocols_and_no_options() -> None:
    assert EchoHandler.protocols == {"tcp", "udp"}
    assert EchoHandler.options == ()
