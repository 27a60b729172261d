"""The echo handler over in-memory connections: bytes back, flow control, UDP replies."""

from __future__ import annotations

from portd.endpoints.inet import inet_peer
from portd.handlers.echo import EchoHandler, EchoSession
from portd.testing.kit import FakeConnection, RecordingEndpoint


def test_every_chunk_is_written_back_unchanged_and_in_order() -> None:
    conn = FakeConnection()
    session = EchoHandler({}).open_session(conn)
    for chunk in (b"a", b"", b"\x00\xff" * 1000, b"last"):
        session.data_received(chunk)
    assert conn.chunks == [b"a", b"", b"\x00\xff" * 1000, b"last"]


def test_a_full_write_queue_pauses_reading_until_it_drains() -> None:
    """A peer that sends but never reads must not make the daemon grow."""
    conn = FakeConnection()
    session = EchoSession(conn)
    session.pause_writing()
    assert conn.reading is False
    session.resume_writing()
    assert conn.reading is True


def test_eof_from_the_peer_closes_after_the_echo_is_flushed() -> None:
    assert EchoSession(FakeConnection()).eof_received() is False


def test_udp_echo_replies_once_with_the_same_bytes_to_the_sender() -> None:
    endpoint = RecordingEndpoint()
    handler = EchoHandler({})
    v4, v6 = inet_peer(("127.0.0.1", 5000)), inet_peer(("::1", 6000, 0, 0))  # noqa: fixed-port
    handler.datagram_received(b"ping", v4, endpoint)
    handler.datagram_received(b"", v6, endpoint)
    assert endpoint.sent == [(b"ping", v4), (b"", v6)]


def test_echo_declares_both_protocols_and_no_options() -> None:
    assert EchoHandler.protocols == {"tcp", "udp"}
    assert EchoHandler.options == ()
