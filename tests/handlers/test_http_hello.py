"""http-hello over an in-memory connection and a clock that moves only when told:
responses byte for byte, keep-alive and pipelining, HTTP/1.0, which error wins, size
limits, lingering after errors, flow control, the header and idle deadlines, drains.

The fakes and the response reader here are shared by the corpus and property tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from portd.config import parse_config
from portd.errors import ConfigError
from portd.handlers.http.heads import KNOWN_HEAD_BYTES, KNOWN_HEADS
from portd.handlers.http.responses import Responses
from portd.handlers.http_hello import LINGER_MAX_BYTES, LINGER_S, HttpHelloHandler, HttpHelloSession
from portd.options import defaults
from portd.testing.kit import FakeConnection, ManualClock

BODY = b"Hello from portd\n"
WALL_CLOCK = 1_700_000_000.0  # the Date every test response carries
DATE = b"Tue, 14 Nov 2023 22:13:20 GMT"
GET = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: example.test\r\n\r\n"
OK_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: portd/test\r\nDate: " + DATE + b"\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\n"
)
OK = OK_HEAD + b"\r\n" + BODY
ALLOWED_STATUSES = {200, 400, 405, 408, 413, 414, 431, 505}


def make_handler(**settings: Any) -> HttpHelloHandler:
    """A handler with defaults, ``settings`` on top, Server "portd/test" and a fixed Date."""
    handler = HttpHelloHandler(
        defaults(HttpHelloHandler.options) | {"server_header": "portd/test"} | settings
    )
    values = handler.settings
    handler.responses = Responses(
        values["body"].encode(), values["content_type"], values["server_header"], lambda: WALL_CLOCK
    )
    return handler


def open_session(
    conn: FakeConnection | None = None,
    clock: ManualClock | None = None,
    handler: HttpHelloHandler | None = None,
    **settings: Any,
) -> tuple[HttpHelloSession, FakeConnection, ManualClock]:
    """A session on ``conn`` (a new FakeConnection), of ``handler`` (a new one with
    ``settings``): sessions of one handler share what it remembers (KnownHeads)."""
    conn = conn or FakeConnection()
    clock = clock or conn.clock
    session = HttpHelloSession(conn, handler or make_handler(**settings), clock)
    conn.session = session
    return session, conn, clock


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes | None  # None: no body followed the head (a HEAD response)


STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) ([A-Za-z ]+)")


def read_responses(data: bytes, body: bytes = BODY) -> list[Response]:
    """Split a response stream, failing on anything malformed.

    A body is taken to follow a head when the next bytes are the body portd sends for
    that status (``body`` for 200, "NNN Reason\\n" otherwise), which is unambiguous as
    long as ``body`` does not start with "HTTP/".
    """
    responses = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"unterminated head: {data[pos:]!r}"
        line, *fields = data[pos:end].split(b"\r\n")
        found = STATUS_LINE.fullmatch(line)
        assert found, f"bad status line {line!r}"
        headers: dict[str, str] = {}
        for field_line in fields:
            name, sep, value = field_line.decode("ascii").partition(": ")
            assert sep, f"bad field line {field_line!r}"
            assert name.lower() not in headers, f"repeated field {field_line!r}"
            headers[name.lower()] = value
        status = int(found[1])
        expected = body if status == 200 else f"{status} {found[2].decode()}\n".encode()
        pos = end + 4
        length = int(headers["content-length"])
        taken: bytes | None = None
        if expected and data.startswith(expected, pos):
            taken = data[pos : pos + length]
            assert taken == expected, f"Content-Length {length} for body {expected!r}"
            pos += length
        responses.append(Response(status, headers, taken))
    return responses


def check_responses(data: bytes, body: bytes = BODY) -> list[Response]:
    """read_responses, plus what every response stream portd writes must satisfy."""
    responses = read_responses(data, body)
    for index, response in enumerate(responses):
        assert response.status in ALLOWED_STATUSES
        assert {"server", "date", "content-type", "content-length"} <= response.headers.keys()
        if response.status != 200:
            assert response.headers["connection"] == "close"
        if response.headers.get("connection") == "close":
            assert index == len(responses) - 1, "a response after Connection: close"
        assert ("allow" in response.headers) == (response.status == 405)
        if response.status == 405:
            assert response.headers["allow"] == "GET, HEAD"
    return responses


def statuses(data: bytes) -> list[int]:
    return [response.status for response in check_responses(data)]


def serve(*chunks: bytes, eof: bool = False, **settings: Any) -> FakeConnection:
    """Feed ``chunks`` (then EOF) to a fresh session; return the connection."""
    session, conn, _ = open_session(**settings)
    for chunk in chunks:
        session.data_received(chunk)
    if eof and not conn.closed:
        session.eof_received()
    return conn


# Well-formed exchanges.


def test_get_is_answered_with_the_exact_response_and_the_connection_stays_open() -> None:
    conn = serve(GET)
    assert conn.written == OK
    assert not conn.done
    assert conn.reading


def test_head_gets_the_same_head_without_the_body() -> None:
    assert serve(HEAD).written == OK_HEAD + b"\r\n"


def test_body_content_type_and_server_come_from_the_settings() -> None:
    conn = serve(GET, body="héllo\n", content_type="text/x-test", server_header="")
    assert conn.written == (
        b"HTTP/1.1 200 OK\r\nDate: " + DATE + b"\r\nContent-Type: text/x-test\r\n"
        b"Content-Length: 7\r\n\r\nh\xc3\xa9llo\n"
    )


def test_keep_alive_answers_each_request_in_turn() -> None:
    session, conn, _ = open_session()
    for count in range(1, 4):
        session.data_received(GET)
        assert conn.written == OK * count
    assert not conn.done


def test_pipelined_requests_are_answered_in_order_in_one_write() -> None:
    conn = serve(GET + HEAD + b"\r\n" + GET + HEAD)
    assert conn.written == OK + OK_HEAD + b"\r\n" + OK + OK_HEAD + b"\r\n"
    assert conn.writes == 1


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_requests_split_anywhere_get_the_same_answers(size: int) -> None:
    stream = GET + HEAD + GET
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    assert serve(*chunks).written == serve(stream).written == OK + OK_HEAD + b"\r\n" + OK


def test_http_1_0_closes_after_the_response_unless_it_asks_for_keep_alive() -> None:
    conn = serve(b"GET / HTTP/1.0\r\n\r\n" + GET)
    assert conn.written == OK_HEAD + b"Connection: close\r\n\r\n" + BODY
    assert conn.closed
    conn = serve(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert conn.written == OK_HEAD + b"Connection: keep-alive\r\n\r\n" + BODY
    assert not conn.done


def test_connection_close_ends_the_connection_and_ignores_what_follows() -> None:
    conn = serve(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + GET)
    assert statuses(bytes(conn.written)) == [200]
    assert conn.written.startswith(OK_HEAD + b"Connection: close\r\n")
    assert conn.closed


def test_an_upgrade_request_is_answered_200_then_closed() -> None:
    request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    conn = serve(request + b"\x00binary after the upgrade")
    assert read_responses(bytes(conn.written))[0].headers["connection"] == "close"
    assert conn.closed


def test_empty_lines_between_requests_are_ignored() -> None:
    assert serve(b"\r\n\r\n" + GET + b"\r\n" + GET).written == OK * 2


def test_the_date_header_follows_the_wall_clock_second() -> None:
    now = [WALL_CLOCK]
    responses = Responses(BODY, "text/plain", "x", lambda: now[0])
    first = responses.ok(0, 0)
    now[0] += 0.5
    assert responses.ok(0, 0) is first
    now[0] += 0.5
    assert b"Date: Tue, 14 Nov 2023 22:13:21 GMT\r\n" in responses.ok(0, 0)


# Errors, and which one wins.

ERRORS = [
    # The request line, judged once complete.
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 405),
    (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 405),  # unknown to llhttp, still a method
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 405),  # methods are case-sensitive
    (b"POST / HTTP/1.1\r\nBad Field\r\n\r\n", 405),  # the line is judged before fields
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    (b"FOO / HTTP/3.0\r\n\r\n", 505),  # the version before the method
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # llhttp allows two spaces; we do not
    (b"GET / RTSP/1.0\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),  # HTTP/0.9
    (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET a HTTP/2.0\r\n\r\n", 505),  # a bad target, but the version is checked first
    (b"POST a HTTP/1.1\r\n\r\n", 400),  # a bad target before the method
    # The fields, in byte order.
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    # The whole head.
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab", 413),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413),
    (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
]


@pytest.mark.parametrize(("request_bytes", "status"), ERRORS)
def test_errors_get_their_status_with_connection_close_then_a_half_close(
    request_bytes: bytes, status: int
) -> None:
    conn = serve(request_bytes)
    (response,) = check_responses(bytes(conn.written))
    assert response.status == status
    assert conn.eof_sent
    assert not conn.closed  # lingering: reading and dropping until the peer closes


def test_a_request_without_host_is_fine_in_http_1_0_and_with_content_length_0() -> None:
    conn = serve(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", GET[:-2] + b"CL: 0\r\n\r\n")
    assert statuses(bytes(conn.written)) == [200, 200]


def test_an_error_to_a_head_request_has_no_body() -> None:
    (response,) = read_responses(bytes(serve(b"HEAD / HTTP/1.1\r\n\r\n").written))
    assert (response.status, response.body) == (400, None)
    assert response.headers["content-length"] == "16"


def test_an_error_after_good_pipelined_requests_comes_after_their_answers() -> None:
    conn = serve(GET + HEAD + b"DELETE / HTTP/1.1\r\n\r\n" + GET)
    assert statuses(bytes(conn.written)) == [200, 200, 405]


def test_after_an_error_input_is_dropped_until_eof_then_the_connection_closes() -> None:
    session, conn, _ = open_session()
    session.data_received(b"BREW / HTTP/1.1\r\n")
    written = bytes(conn.written)
    session.data_received(GET * 100)
    assert conn.written == written
    assert session.eof_received() is False  # the server closes the transport
    assert [e[1:] for e in conn.log.events] == [("http_rejected", {"status": 405, "requests": 0})]


def test_lingering_ends_after_linger_s_or_after_enough_dropped_bytes() -> None:
    session, conn, clock = open_session()
    session.data_received(b"\x16\x03\x01")  # a TLS handshake: rejected at once
    assert statuses(bytes(conn.written)) == [400]
    clock.advance(LINGER_S - 0.01)
    assert not conn.closed
    clock.advance(0.01)
    assert conn.closed
    session, conn, _ = open_session()
    session.data_received(b"x\x00")
    session.data_received(b"x" * LINGER_MAX_BYTES)
    assert not conn.closed
    session.data_received(b"x")
    assert conn.closed


def test_eof_in_the_middle_of_a_head_is_400_and_eof_when_idle_is_a_plain_close() -> None:
    session, conn, _ = open_session()
    session.data_received(GET + b"GET / HT")
    assert session.eof_received() is False
    assert statuses(bytes(conn.written)) == [200, 400]
    assert conn.closed
    session, conn, _ = open_session()
    session.data_received(GET + b"\r\n")
    assert session.eof_received() is False
    assert conn.written == OK


# Size limits: the last size that passes and the first that fails.


def head_with(line: bytes = b"GET / HTTP/1.1", fields: list[bytes] | None = None) -> bytes:
    fields = [b"Host: a"] if fields is None else fields
    return b"\r\n".join([line, *fields, b"", b""])


def target_for_line(length: int) -> bytes:
    """A request line of exactly ``length`` bytes."""
    return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"


def field_of(length: int, name: bytes = b"X") -> bytes:
    return name + b": " + b"v" * (length - len(name) - 2)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (head_with(target_for_line(8192)), 200),
        (head_with(target_for_line(8193)), 414),
        (head_with(fields=[b"Host: a", field_of(8192)]), 200),
        (head_with(fields=[b"Host: a", field_of(8193)]), 431),
        (head_with(fields=[b"Host: a", *[b"X: y"] * 99]), 200),
        (head_with(fields=[b"Host: a", *[b"X: y"] * 100]), 431),
        # 9 + 8002 + 8002 + 371 = 16384 bytes of field lines with CRLFs, then one more.
        (head_with(fields=[b"Host: a", field_of(8000), field_of(8000), field_of(369)]), 200),
        (head_with(fields=[b"Host: a", field_of(8000), field_of(8000), field_of(370)]), 431),
    ],
    ids=["line-8192", "line-8193", "field-8192", "field-8193", "fields-100", "fields-101",
         "section-16384", "section-16385"],
)  # fmt: skip
def test_size_limits_pass_at_the_limit_and_fail_one_byte_or_field_over(
    request_bytes: bytes, status: int
) -> None:
    assert statuses(bytes(serve(request_bytes).written)) == [status]


def test_an_over_long_request_line_is_414_before_its_end_arrives() -> None:
    session, conn, _ = open_session()
    session.data_received(b"GET /" + b"a" * 8187)  # 8192 bytes, no CRLF yet: wait
    assert conn.written == b""
    session.data_received(b"\r")  # could still be the CRLF
    assert conn.written == b""
    session.data_received(b"a")
    assert statuses(bytes(conn.written)) == [414]


def test_an_over_long_field_is_431_before_its_end_arrives() -> None:
    session, conn, _ = open_session()
    session.data_received(b"GET / HTTP/1.1\r\nX: ")
    for _ in range(8):
        session.data_received(b"v" * 1024)
    assert statuses(bytes(conn.written)) == [431]


def test_a_syntax_error_before_a_limit_wins_over_the_limit() -> None:
    request = head_with(fields=[b"Host: a", b"Bad Field", field_of(9000)])
    assert statuses(bytes(serve(request).written)) == [400]
    request = head_with(fields=[b"Host: a", field_of(9000), b"Bad Field"])
    assert statuses(bytes(serve(request).written)) == [431]


def test_a_request_line_that_cannot_become_valid_is_rejected_without_waiting() -> None:
    for junk in (b"GET /\n", b"GET\t/", b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1 "):
        assert statuses(bytes(serve(junk).written)) == [400], junk
    for prefix in (b"G", b"GET /a", b"GET /a HTTP/1.", b"FOO * HTTP/9.9\r"):
        assert serve(prefix).written == b"", prefix


# Flow control.


def test_a_peer_that_stops_reading_is_not_read_until_it_drains_its_answers() -> None:
    session, conn, _ = open_session(FakeConnection(high_water=64 * 1024))
    chunk = GET * 2000  # 78 KB of requests in one read, 324 KB of answers
    session.data_received(chunk)
    assert conn.paused
    assert not conn.reading
    answered = len(read_responses(bytes(conn.written)))
    assert answered < 2000
    assert len(session._buf) < len(chunk)  # the rest waits, unparsed, in one chunk's room
    while conn.paused:
        conn.drain()
    assert conn.reading
    assert conn.written == OK * 2000


def test_eof_while_answers_are_queued_finishes_them_then_closes() -> None:
    session, conn, _ = open_session(FakeConnection(high_water=1000))
    session.data_received(GET * 20 + b"GET / HT")
    assert session.eof_received() is True  # keep the transport writable
    while conn.paused:
        conn.drain()
    assert statuses(bytes(conn.written)) == [200] * 20 + [400]
    assert conn.closed


def test_a_peer_that_drains_its_queue_gets_a_fresh_idle_timeout() -> None:
    session, conn, clock = open_session(
        FakeConnection(high_water=100), header_timeout_s=3, keepalive_timeout_s=5
    )
    session.data_received(GET * 5)
    clock.advance(2.9)
    conn.drain()
    clock.advance(4.99)
    assert not conn.done
    clock.advance(0.01)
    assert conn.closed


def test_a_stalled_peer_is_aborted_after_header_timeout_s() -> None:
    session, conn, clock = open_session(FakeConnection(high_water=100), header_timeout_s=3)
    session.data_received(GET * 5)
    clock.advance(2.99)
    assert not conn.aborted
    clock.advance(0.01)
    assert conn.aborted


# Timers.


def test_the_first_head_must_arrive_within_header_timeout_s_of_the_connect() -> None:
    session, conn, clock = open_session(header_timeout_s=2)
    clock.advance(1)
    session.data_received(b"GET / HTTP/1.1\r\n")
    for _ in range(9):
        clock.advance(0.1)
        session.data_received(b"X")  # bytes keep coming, but the deadline is absolute
    assert conn.written == b""
    clock.advance(0.1)
    assert statuses(bytes(conn.written)) == [408]
    assert conn.eof_sent


def test_a_connection_that_sends_nothing_is_closed_silently_at_the_deadline() -> None:
    _, conn, clock = open_session(header_timeout_s=2)
    clock.advance(1.99)
    assert not conn.closed
    clock.advance(0.01)
    assert (conn.closed, conn.written) == (True, bytearray())


def test_later_heads_get_header_timeout_s_from_their_first_byte() -> None:
    session, conn, clock = open_session(header_timeout_s=2, keepalive_timeout_s=5)
    session.data_received(GET)
    clock.advance(4)
    session.data_received(b"G")
    for byte in b"ET / HTT":
        clock.advance(0.125)
        session.data_received(bytes([byte]))  # more bytes do not move the deadline
    clock.advance(0.5)
    assert conn.written == OK
    clock.advance(0.5)
    assert statuses(bytes(conn.written)) == [200, 408]


def test_an_idle_keep_alive_connection_closes_after_keepalive_timeout_s() -> None:
    session, conn, clock = open_session(keepalive_timeout_s=5)
    for _ in range(3):
        clock.advance(4)
        session.data_received(GET)
    clock.advance(4.99)
    assert not conn.closed
    clock.advance(0.01)
    assert conn.closed
    assert len(clock.timers) <= 3, "the deadline moved without a timer per request"


def test_an_idle_connection_whose_answers_are_unread_is_aborted() -> None:
    session, conn, clock = open_session(FakeConnection(high_water=10**9), keepalive_timeout_s=1)
    session.data_received(GET)
    clock.advance(1)
    assert conn.aborted


def test_keepalive_timeout_0_closes_after_every_response() -> None:
    conn = serve(GET, keepalive_timeout_s=0)
    assert conn.written == OK_HEAD + b"Connection: close\r\n\r\n" + BODY
    assert conn.closed


def test_a_closed_session_cancels_its_timer_and_ignores_late_calls() -> None:
    session, conn, clock = open_session()
    session.connection_lost(None)
    assert clock.pending == []
    clock.advance(100)
    assert not conn.done


# Draining.


def test_shutdown_half_closes_an_idle_connection_and_drops_a_request_racing_in() -> None:
    """A FIN and a linger, never a close with unread input: the client sees EOF, not RST."""
    session, conn, clock = open_session()
    session.data_received(GET)
    answered = bytes(conn.written)
    session.shutdown_requested()
    assert (conn.eof_sent, conn.closed) == (True, False)
    session.data_received(GET)  # sent before the client saw the FIN
    assert bytes(conn.written) == answered  # dropped, not answered
    clock.advance(LINGER_S)
    assert conn.closed


def test_shutdown_answers_the_first_request_of_a_connection_that_sent_none_yet() -> None:
    """Accepted just before the stop (or the reload): it is served, then closed."""
    session, conn, _ = open_session()
    session.shutdown_requested()
    assert not conn.done
    session.data_received(GET)
    (response,) = read_responses(bytes(conn.written))
    assert (response.status, response.headers["connection"]) == (200, "close")
    assert conn.closed


def test_shutdown_lets_a_request_in_flight_finish_with_connection_close() -> None:
    session, conn, _ = open_session()
    session.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n")
    session.shutdown_requested()
    assert not conn.closed
    session.data_received(b"\r\n" + GET)
    assert conn.written == OK_HEAD + b"Connection: close\r\n\r\n" + BODY
    assert conn.closed


def test_a_connection_opened_while_draining_gets_one_answer_with_close() -> None:
    session, conn, _ = open_session(FakeConnection(draining=True))
    assert not conn.closed
    session.data_received(GET + GET)
    assert statuses(bytes(conn.written)) == [200]
    assert conn.written.startswith(OK_HEAD + b"Connection: close\r\n")


def test_an_error_while_draining_closes_without_lingering() -> None:
    session, conn, _ = open_session()
    session.shutdown_requested()
    session.data_received(b"GET / HTTP/1.1\r\n\r\n")  # a new connection would have closed...
    assert conn.closed


# Heads seen before (KnownHeads): answered from the verdict, as when first parsed.


def test_a_remembered_head_is_answered_without_the_parser() -> None:
    handler = make_handler()
    open_session(handler=handler)[0].data_received(GET)
    session, conn, _ = open_session(handler=handler)
    session.parser = None  # type: ignore[assignment]  # any use of it would raise
    session.data_received(GET)
    session.data_received(GET)
    assert conn.written == (OK_HEAD + b"\r\n" + BODY) * 2
    assert session.requests == 2


def test_a_remembered_head_while_draining_gets_close() -> None:
    handler = make_handler()
    open_session(handler=handler)[0].data_received(GET)
    session, conn, _ = open_session(FakeConnection(draining=True), handler=handler)
    session.data_received(GET)
    assert conn.written == OK_HEAD + b"Connection: close\r\n\r\n" + BODY
    assert conn.closed


def test_a_remembered_head_that_fills_the_peer_s_window_waits_for_it() -> None:
    handler = make_handler(header_timeout_s=3, keepalive_timeout_s=5)
    open_session(handler=handler)[0].data_received(GET)
    session, conn, clock = open_session(FakeConnection(high_water=100), handler=handler)
    session.data_received(GET)
    assert session.paused  # the answer filled the window: the header timeout applies
    clock.advance(2.99)
    assert not conn.aborted
    clock.advance(0.01)
    assert conn.aborted


def test_remembered_heads_are_bounded_in_number_and_size() -> None:
    handler = make_handler()
    for index in range(KNOWN_HEADS * 3):
        session, conn, _ = open_session(handler=handler)
        session.data_received(f"GET /{index} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert statuses(bytes(conn.written)) == [200]
        assert 0 < len(handler.known_heads.heads) <= KNOWN_HEADS
    long_head = b"GET /" + b"a" * KNOWN_HEAD_BYTES + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    open_session(handler=handler)[0].data_received(long_head)
    assert long_head not in handler.known_heads.heads


def test_only_heads_answered_200_are_remembered() -> None:
    handler = make_handler()
    rejected = [
        b"GET / HTTP/1.1\r\n\r\n",  # no Host: 400
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",  # 413
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # 400
    ]
    for head in rejected:
        open_session(handler=handler)[0].data_received(head)
    assert handler.known_heads.heads == {}


# Options.


def load(extra: str) -> Any:
    text = f'[[listener]]\nbind = "127.0.0.1:0"\nhandler = "http-hello"\n{extra}\n'
    import tomllib

    return parse_config(tomllib.loads(text), "t.toml")


def test_options_have_documented_defaults() -> None:
    (listener,) = load("").listeners
    assert dict(listener.settings) == {
        "body": "Hello from portd\n",
        "content_type": "text/plain; charset=utf-8",
        "server_header": "portd/0.1.0.dev0",
        "header_timeout_s": 10.0,
        "keepalive_timeout_s": 5.0,
    }
    assert HttpHelloHandler.protocols == {"tcp"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('content_type = "text/plain\\r\\nX-Injected: 1"', "content_type = "),
        ('server_header = "a\\u0000b"', "server_header = "),
        ("header_timeout_s = 0", "header_timeout_s = 0: expected a number from 0.001 to 3600"),
        ("keepalive_timeout_s = -1", "keepalive_timeout_s = -1: expected a number from 0"),
        ('protocol = "udp"', "handler 'http-hello' serves tcp only"),
        ("bogus = 1", "bogus = 1: unknown key"),
    ],
)
def test_bad_options_are_config_errors(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(extra)
    assert message in str(caught.value)
