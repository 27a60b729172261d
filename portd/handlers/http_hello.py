"""http-hello: ``200 OK`` with a fixed body for every GET and HEAD, over HTTP/1.0 and 1.1.

llhttp (through httptools) parses; ``http/heads.py`` adds the request-line shape and
the size limits llhttp lacks. The session frames requests itself only to know where
each head ends (a body is never accepted, so a head ends at its first CRLF CRLF): a
request line goes to llhttp once its CRLF is in, field lines as they arrive.

Which answer wins when several apply, in the order they are checked:

1. The request line: over 8 KiB 414 (even before its CRLF arrives); more than 16 bytes
   of empty lines before it 400; not ``token SP target SP HTTP/d.d`` 400 (at once when
   the bytes so far cannot become one, so a TLS handshake is answered without waiting);
   a version other than 1.0 and 1.1 505; a target llhttp rejects, ``*`` or a bad ``%``
   escape 400; a method other than GET and HEAD 405.
2. The field lines, in byte order: whatever llhttp rejects (bare CR or LF, obs-fold,
   bad token or value bytes, duplicate Content-Length, Content-Length with
   Transfer-Encoding) 400; a field line over 8 KiB, a section over 16 KiB or a 101st
   field 431. llhttp is fed only the bytes before a limit, so an earlier error wins.
3. The whole head: HTTP/1.1 without exactly one Host, HTTP/1.0 with several, a Host
   that is not ``host[:port]``, a Transfer-Encoding that does not end in ``chunked``
   (or any on HTTP/1.0) 400; request content (a Content-Length above 0, or chunked)
   413, since no request here takes a body.

Every error response says ``Connection: close``; then portd half-closes and reads
and drops input until the peer closes, LINGER_S passes or LINGER_MAX_BYTES arrive,
so a peer still sending (a body, a slow head) reads the error instead of a reset.
A request marked as an Upgrade is answered 200 with ``Connection: close``.

Timers: one deadline per connection. The first head must be complete within
``header_timeout_s`` of the connect, each later one within ``header_timeout_s`` of
its first byte (408, or a silent close when no byte came); between requests the
connection may idle for ``keepalive_timeout_s``. A peer that lets portd's send queue
fill stops being read (its pipelined requests stay in the kernel) and must drain the
queue within ``header_timeout_s``, or it is aborted.

Draining (``shutdown_requested``, on SIGTERM and for a listener a reload replaced): a
connection idle between requests is half-closed and lingers (a request racing in sees
EOF, never an RST); one that has not sent its first request yet, or has a head in
progress, gets that request answered with ``Connection: close``, then closes.
"""

from __future__ import annotations

from typing import ClassVar

from portd import __version__
from portd.endpoints.base import ProtocolName
from portd.handlers.base import Connection, Handler, StreamSession
from portd.handlers.http.deadline import FirstDeadlines
from portd.handlers.http.heads import KnownHeads
from portd.handlers.http.responses import Responses, check_field_value
from portd.handlers.http.session import LINGER_MAX_BYTES, LINGER_S, HttpHelloSession
from portd.options import Option, Settings

__all__ = ["LINGER_MAX_BYTES", "LINGER_S", "HttpHelloHandler", "HttpHelloSession"]


def _check_server_header(value: str) -> str:
    return check_field_value(value) if value else value


class HttpHelloHandler(Handler):
    """Answers GET and HEAD with a fixed body; anything else with a 4xx/5xx and a close."""

    name = "http-hello"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})
    alpn = ("http/1.1",)
    options = (
        Option("body", str, "Hello from portd\n", "response body, sent as UTF-8"),
        Option(
            "content_type",
            str,
            "text/plain; charset=utf-8",
            "Content-Type of the body",
            convert=check_field_value,
        ),
        Option(
            "server_header",
            str,
            f"portd/{__version__}",
            "Server header; empty: none",
            convert=_check_server_header,
        ),
        Option(
            "header_timeout_s",
            float,
            10.0,
            "a request head must arrive within this; so must a full send queue drain",
            minimum=0.001,
            maximum=3600,
        ),
        Option(
            "keepalive_timeout_s",
            float,
            5.0,
            "idle time allowed between requests; 0 turns keep-alive off",
            minimum=0,
            maximum=3600,
        ),
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.responses = Responses(
            settings["body"].encode("utf-8"), settings["content_type"], settings["server_header"]
        )
        self.known_heads = KnownHeads()  # verdicts on heads seen, shared by sessions
        # Every session's first deadline is header_timeout_s after its connect: one queue.
        self._first: FirstDeadlines | None = None

    def open_session(self, conn: Connection) -> StreamSession:
        clock = conn.clock
        first = self._first
        if first is None or first.clock is not clock:  # the listener's loop (one per test)
            first = self._first = FirstDeadlines(clock)
        return HttpHelloSession(conn, self, clock, first)

    def busy_response(self) -> bytes:
        """503 with ``Connection: close`` for a client turned away by ``max_connections``."""
        return self.responses.error(503)
