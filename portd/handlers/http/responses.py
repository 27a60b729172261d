"""Response bytes for the HTTP handlers: built once, re-dated at most once a second.

A hello response differs from the next only in its Date header and in how it ends the
exchange, so every variant is prebuilt and rebuilt when the second changes (as nginx
and uvicorn cache their Date header). Error responses are rare and built on demand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate

from portd.errors import OptionError

REASONS = {
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
ALLOW = b"Allow: GET, HEAD\r\n"
STREAMED_BODY_BYTES = 64 << 10  # larger bodies go out piece by piece, as the peer reads
BODY_PIECE_BYTES = 64 << 10

# How a response ends the exchange; the index into the prebuilt variants is kind * 2 + head.
KEEP_ALIVE = 0  # HTTP/1.1 default: no Connection header needed
CLOSE = 1  # Connection: close, and the connection closes after it
KEEP_ALIVE_1_0 = 2  # an HTTP/1.0 client asked for keep-alive and must be told it got it
_CONNECTION = (b"", b"Connection: close\r\n", b"Connection: keep-alive\r\n")


def check_field_value(value: str) -> str:
    """Accept a header value made of visible ASCII, spaces and tabs (no line breaks).

    Raises:
        OptionError: the value could inject or break a header line.
    """
    if not all(char == "\t" or " " <= char <= "~" for char in value):
        raise OptionError("expected visible ASCII, spaces and tabs only (no control characters)")
    return value


def http_date(now: float) -> bytes:
    """``now`` as an IMF-fixdate (RFC 9110 §5.6.7)."""
    return formatdate(now, usegmt=True).encode("ascii")


class Responses:
    """Every response one handler sends, for its body, content type and Server header."""

    __slots__ = ("_body", "_clock", "_expires", "_fixed", "_ok", "_server", "body", "streamed")

    def __init__(
        self, body: bytes, content_type: str, server: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._body = body
        # A large body is not copied into every connection's send queue (asyncio copies
        # what it queues): ok() then gives the head only, and the session writes
        # ``body`` in pieces as the peer reads.
        self.streamed = len(body) > STREAMED_BODY_BYTES
        self.body = memoryview(body)
        self._server = f"Server: {server}\r\n".encode("ascii") if server else b""
        self._fixed = f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode(
            "ascii"
        )
        self._clock = clock
        self._expires = 0.0
        self._ok: tuple[bytes, ...] = ()

    def ok(self, kind: int, head: int) -> bytes:
        """The 200 response; a true ``head`` leaves out the body (Content-Length stays)."""
        if self._clock() >= self._expires:
            self._rebuild()
        return self._ok[kind * 2 + head]

    def _rebuild(self) -> None:
        now = self._clock()
        self._expires = float(int(now) + 1)
        start = b"HTTP/1.1 200 OK\r\n" + self._server + b"Date: " + http_date(now) + b"\r\n"
        variants = []
        for connection in _CONNECTION:
            head = start + self._fixed + connection + b"\r\n"
            variants += [head if self.streamed else head + self._body, head]
        self._ok = tuple(variants)

    def error(self, status: int, head: int = 0) -> bytes:
        """An error response with ``Connection: close``; 405 carries ``Allow``."""
        reason = REASONS[status]
        body = f"{status} {reason}\n".encode("ascii")
        lines = [
            f"HTTP/1.1 {status} {reason}\r\n".encode("ascii"),
            self._server,
            b"Date: " + http_date(self._clock()) + b"\r\n",
            ALLOW if status == 405 else b"",
            b"Content-Type: text/plain; charset=utf-8\r\n",
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii"),
            b"" if head else body,
        ]
        return b"".join(lines)
