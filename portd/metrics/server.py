"""The ``/metrics`` endpoint: GET (or HEAD) ``/metrics`` over HTTP/1.x, one request per
connection, answered in the Prometheus text format, or OpenMetrics when the scraper's
Accept header asks for ``application/openmetrics-text``.

Small on purpose: a request head of at most MAX_HEAD_BYTES that must arrive within
REQUEST_TIMEOUT_S, at most MAX_CLIENTS at once, every answer closes the connection.
Sockets are accepted by the listeners' accept loop, which backs off when descriptors
run out instead of giving up.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.utils import formatdate
from typing import Any, cast

from portd.listeners.accept import AcceptLoop
from portd.listeners.adopt import Adoptions
from portd.metrics.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, render

MAX_HEAD_BYTES = 8192
MAX_CLIENTS = 16
REQUEST_TIMEOUT_S = 10.0
PATH = b"/metrics"
REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
}  # fmt: skip
Collect = Callable[[], Awaitable[Mapping[str, Any]]]


class MetricsServer:
    """Serves ``collect()``'s snapshot, rendered, to every scrape."""

    def __init__(self, sockets: Sequence[socket.socket], collect: Collect, log: Any) -> None:
        """Take ownership of ``sockets`` (bound and listening); :meth:`close` closes them."""
        self.sockets = list(sockets)
        self.collect = collect
        self.log = log
        self.clients = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adoptions = Adoptions(self._adopted)
        self._accept = AcceptLoop(self.sockets, self._accepted, log, self._adoptions.batch_done)

    def start(self) -> None:
        """Answer scrapes on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._adoptions.start(self._loop)
        self._accept.start(self._loop)

    def _accepted(self, conn: socket.socket, addr: Any) -> bool:
        assert self._loop is not None
        if self.clients >= MAX_CLIENTS:
            conn.close()  # a flood of scrapers must not cost the daemon memory
            return True
        self.clients += 1
        self._adoptions.adopt(lambda: _Scrape(self), conn, None)
        return True

    def _adopted(self, error: BaseException | None, conn: socket.socket, _token: object) -> None:
        if error is not None:
            conn.close()
            self.clients -= 1

    def close(self) -> None:
        """Stop answering and close the sockets (idempotent); scrapes in flight end."""
        self._accept.stop()
        for task in self.tasks:
            task.cancel()
        for sock in self.sockets:
            sock.close()
        self.sockets = []


class _Scrape(asyncio.Protocol):
    """One scrape: read the head, answer, close."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self.done = True
                self._answer(431, b"request head too large\n")
            return
        self.done = True
        self.transport.pause_reading()
        lines = self.buffer[:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._answer(400, b"bad request\n")
        elif parts[0] not in (b"GET", b"HEAD"):
            self._answer(405, b"GET /metrics\n", b"Allow: GET, HEAD\r\n")
        elif parts[1].partition(b"?")[0] != PATH:
            self._answer(404, b"metrics are at /metrics\n")
        else:
            openmetrics = any(
                line.lower().startswith(b"accept:") and b"application/openmetrics-text" in line
                for line in lines[1:]
            )
            task = asyncio.get_running_loop().create_task(
                self._scrape(openmetrics, head=parts[0] == b"HEAD")
            )
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)

    async def _scrape(self, openmetrics: bool, head: bool) -> None:
        try:
            snapshot = await self.server.collect()
            body = render(snapshot, openmetrics)
        except Exception as exc:  # noqa: BLE001 - a scrape that failed must not stop the daemon
            self.server.log.error("metrics_failed", error=f"{type(exc).__name__}: {exc}")
            self._answer(500, b"metrics could not be collected; see the daemon's log\n")
            return
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        self._answer(200, b"" if head else body, length=len(body), content_type=content_type)

    def _answer(
        self,
        status: int,
        body: bytes,
        extra: bytes = b"",
        *,
        length: int | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        if self.transport.is_closing():
            return
        reason = REASONS[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nDate: {formatdate(usegmt=True)}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n"
        ).encode("ascii")
        self.transport.write(head + extra + b"\r\n" + body)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.clients -= 1
        if self.timer is not None:
            self.timer.cancel()


def bind_metrics(setting: str) -> list[socket.socket]:
    """The sockets ``[daemon] metrics`` names, bound and listening (before any privilege
    drop, with the listeners); the caller owns them.

    Raises:
        BindError: as for a listener, naming ``[daemon] metrics``.
    """
    from portd.config.daemon import metrics_bind
    from portd.endpoints.base import SocketOptions
    from portd.endpoints.parse import parse_endpoint

    endpoint = parse_endpoint(metrics_bind(setting), "tcp", absolute_paths=True)
    sockets: list[socket.socket] = endpoint.open_sockets(
        endpoint.resolve(), SocketOptions(backlog=MAX_CLIENTS), "[daemon] metrics"
    )
    return sockets


def announce(setting: str, sockets: Sequence[socket.socket], log: Any) -> None:
    """``metrics_ready`` with the bound addresses; a warning when hosts other than this
    one can reach them (allowed: a firewall or a scrape network may guard them)."""
    from portd.config.daemon import metrics_bind
    from portd.endpoints.parse import parse_endpoint

    endpoint = parse_endpoint(metrics_bind(setting), "tcp", absolute_paths=True)
    addresses = list(endpoint.bound_addresses(sockets))
    port = getattr(addresses[0], "port", None) if addresses else None
    fields = {"port": port} if port else {}
    log.info("metrics_ready", addresses=[str(a) for a in addresses], path="/metrics", **fields)
    exposed = [str(address) for address in addresses if not address.local_only]
    if exposed:
        log.warning(
            "metrics_exposed", addresses=exposed,
            message="/metrics answers every host that can reach these addresses: it names "
            "listeners and their traffic; keep it behind a firewall or bind 127.0.0.1",
        )  # fmt: skip
