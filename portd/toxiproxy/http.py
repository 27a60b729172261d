"""A small HTTP/1.1 server for the API: llhttp parses (through httptools, as for
http-hello), a router answers each request with JSON.

Requests are answered in order on a keep-alive connection (HTTP/1.0 closes after the
answer unless asked). Bodies above MAX_BODY_BYTES and heads above MAX_HEAD_BYTES are
refused (413, 431) and the connection is closed; anything llhttp cannot parse is a 400
with a JSON error, then a close. Requests are answered one at a time by a task the
connection owns (a request that binds a port does not hold up the loop); while one is
being answered, the connection is not read, so a pipelining client queues in the kernel.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from portd.handlers.base import Connection, StreamSession

MAX_BODY_BYTES = 1 << 20
MAX_HEAD_BYTES = 64 * 1024
REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
}  # fmt: skip
Answer = tuple[int, Any]  # status, and a JSON value (None: no body)
Router = Callable[[str, str, bytes], Awaitable[Answer]]
Request = tuple[str, str, bytes, bool]  # method, path, body, keep-alive


def json_error(status: int, message: str) -> Answer:
    """toxiproxy's error shape: ``{"error": "...", "status": 404}``."""
    return status, {"error": message, "status": status}


def render(status: int, value: Any, keep_alive: bool) -> bytes:
    """One response with a JSON body (none for 204)."""
    body = b"" if value is None else json.dumps(value).encode() + b"\n"
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    if status != 204:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _too_long(length: bytes) -> bool:
    return length.isdigit() and (len(length) > 12 or int(length) > MAX_BODY_BYTES)


class ApiSession(StreamSession):
    """One API client connection."""

    def __init__(self, conn: Connection, route: Router) -> None:
        self.conn = conn
        self.route = route
        self.parser = HttpRequestParser(self)
        self.url = b""
        self.body = bytearray()
        self.head_bytes = 0
        self.failed = False
        self.busy = False
        self.requests: deque[Request] = deque()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = bytearray()
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        if name.lower() == b"content-length" and _too_long(value.strip()):
            self._fail(*json_error(413, "request body too large"))  # before it comes

    def _count(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            self._fail(*json_error(431, "request head too large"))

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_BODY_BYTES:
            self._fail(*json_error(413, "request body too large"))
            return
        self.body += body

    def on_message_complete(self) -> None:
        if self.failed:
            return
        method = self.parser.get_method().decode("ascii", "replace")
        path = self.url.split(b"?", 1)[0].decode("utf-8", "replace")
        self.requests.append((method, path, bytes(self.body), self.parser.should_keep_alive()))
        if not self.busy:
            self.busy = True
            self.conn.pause_reading()
            self.conn.start_task(self._answer())

    async def _answer(self) -> None:
        while self.requests:
            method, path, body, keep_alive = self.requests.popleft()
            try:
                status, value = await self.route(method, path, body)
            except Exception as exc:  # a bug answers 500, and the API serves on
                self.conn.log.error("api_failed", method=method, path=path, exc_info=exc)
                status, value = json_error(500, f"{type(exc).__name__}: {exc}")
            if self.conn.is_closing():
                return
            self.conn.write(render(status, value, keep_alive))
            if not keep_alive:
                self.conn.close()
                return
        self.busy = False
        self.conn.resume_reading()

    def _fail(self, status: int, value: Any) -> None:
        if not self.failed:
            self.failed = True
            self.conn.write(render(status, value, keep_alive=False))
            self.conn.close()

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(*json_error(400, "upgrade is not supported"))
        except HttpParserError as exc:
            self._fail(*json_error(400, f"bad request: {exc}"))

    def eof_received(self) -> bool:
        return self.busy  # answer what was asked before closing
