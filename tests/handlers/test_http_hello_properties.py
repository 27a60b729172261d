"""Properties of http-hello over arbitrary input: whatever bytes arrive, and however
the reads split them, the session raises nothing, writes only well-formed responses
with allowed statuses (an error is the last thing written), answers the same whole or
split, holds at most one request head of unparsed input, and answers a head it has
seen before (KnownHeads) as it did the first time."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portd.handlers.http.heads import MAX_FIELDS_BYTES, MAX_LINE, KnownHeads
from portd.handlers.http_hello import HttpHelloHandler
from portd.testing.kit import FakeConnection
from tests.handlers.test_http_hello import check_responses, make_handler, open_session

MAX_HEAD_HELD = MAX_LINE + 2 + MAX_FIELDS_BYTES + 2  # a request line, fields, a CR or CRLF

# Pieces that reach deep into the parser more often than random bytes would.
PIECES = [
    b"GET", b"HEAD", b"POST", b"BREW", b"get", b" ", b"  ", b"/", b"/a?b=c", b"*",
    b"http://h/", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.", b"RTSP/1.0",
    b"\r\n", b"\r", b"\n", b"\r\n\r\n", b"Host: a", b"Host:", b"Host: a b",
    b"Content-Length: 0", b"Content-Length: 5", b"Content-Length: 1, 1",
    b"Transfer-Encoding: chunked", b"Connection: close", b"Connection: keep-alive",
    b"Connection: Upgrade", b"Upgrade: h2c", b"X: y", b"X : y", b" folded", b"\t",
    b"\x00", b"\x7f", b"\xff", b":", b"a" * 300, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n",
]  # fmt: skip
streams = st.one_of(
    st.binary(max_size=600),
    st.lists(st.sampled_from(PIECES) | st.binary(max_size=8), max_size=40).map(b"".join),
)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed(data: bytes, cuts: list[int], eof: bool) -> FakeConnection:
    """Feed ``data`` cut at ``cuts``, then EOF if asked, checking bounds after each read."""
    session, conn, _ = open_session()
    edges = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]
    for start, end in itertools.pairwise(edges):
        if start < end:
            session.data_received(data[start:end])
            assert len(session._buf) <= MAX_HEAD_HELD
    if eof and not conn.done:
        session.eof_received()
    return conn


@PROPERTY
@given(data=streams, cuts=st.lists(st.integers(min_value=0), max_size=12), eof=st.booleans())
def test_any_input_gets_well_formed_answers_whole_or_split(
    data: bytes, cuts: list[int], eof: bool
) -> None:
    whole = feed(data, [], eof)
    split = feed(data, cuts, eof)
    responses = check_responses(bytes(whole.written))
    assert split.written == whole.written
    assert (split.closed, split.eof_sent) == (whole.closed, whole.eof_sent)
    if any(r.status != 200 for r in responses):
        assert responses[-1].status != 200
        assert whole.closed or whole.eof_sent


@PROPERTY
@given(data=streams)
def test_any_input_followed_by_eof_is_answered_or_closed_never_left_hanging(data: bytes) -> None:
    session, conn, _ = open_session()
    session.data_received(data)
    if not conn.done:
        assert session.eof_received() is False
    assert session._buf == b""
    check_responses(bytes(conn.written))


# Whole GET heads, as one read each: the reads KnownHeads may answer without parsing.
TARGETS = [b"/", b"/a?b=c", b"*", b"http://h/", b"/%zz", b"/%41", b"/a#f", b"//", b"/\x7f"]
FIELDS = [
    b"Host: a", b"Host: a b", b"Host:", b"host: a", b"HOST: a:80", b"Host: [::1]:8",
    b"Connection: close", b"Connection: keep-alive", b"Connection: Upgrade", b"Upgrade: h2c",
    b"Content-Length: 0", b"Content-Length: 5", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip", b"X: y", b"X : y", b" folded", b"X:\x00",
]  # fmt: skip
whole_heads = st.builds(
    lambda target, version, fields: b"GET " + target + b" " + version + b"\r\n"
    + b"".join(field + b"\r\n" for field in fields) + b"\r\n",
    st.sampled_from(TARGETS),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2"]),
    st.lists(st.sampled_from(FIELDS), max_size=4),
)  # fmt: skip


def answers(
    handler: HttpHelloHandler, reads: list[bytes], draining: bool
) -> tuple[bytes, bool, bool]:
    session, conn, _ = open_session(FakeConnection(draining=draining), handler=handler)
    for data in reads:
        if not conn.done:
            session.data_received(data)
    return bytes(conn.written), conn.closed, conn.eof_sent


@PROPERTY
@given(head=whole_heads, repeats=st.integers(min_value=1, max_value=3), draining=st.booleans())
def test_a_head_seen_before_is_answered_as_the_first_time(
    head: bytes, repeats: int, draining: bool
) -> None:
    parsing = make_handler()
    parsing.known_heads = ForgetfulHeads()  # every head parsed, every time
    parsed = answers(parsing, [head] * repeats, draining)
    handler = make_handler()
    first = answers(handler, [head] * repeats, draining)  # the repeats may be remembered
    again = answers(handler, [head] * repeats, draining)
    assert first == parsed
    assert again == parsed
    check_responses(parsed[0])


class ForgetfulHeads(KnownHeads):
    """KnownHeads that never remembers."""

    def remember(self, head: bytes, keep_alive: bool) -> None:
        pass
