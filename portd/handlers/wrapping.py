"""Handlers that wrap another: the fault handlers put echo or http-hello behind a fault.

A wrapping handler builds the inner handler (with its default options) and, per
connection, puts two proxies between it and the server: a :class:`SessionProxy` the
server drives, which forwards to the inner session, and a :class:`ConnectionProxy` the
inner session writes to, which forwards to the server's connection. A fault overrides
the few methods it changes (what is written, when, how the connection ends) and
inherits plain forwarding for the rest.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from portd.handlers.base import Connection, FdWatch, Handler, StreamSession
from portd.options import Option, Settings, defaults

WRAPPABLE = ("echo", "http-hello")
WRAPS_OPTION = Option(
    "wraps",
    str,
    "echo",
    "the handler behind the fault (with its default options)",
    choices=WRAPPABLE,
)
SEED_OPTION = Option("seed", int, 0, "seeds the random timings: the same seed, the same timings")


class ConnectionProxy:
    """The Connection an inner session sees: forwards everything to the real one."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.conn_id = conn.conn_id
        self.peer = conn.peer
        self.listener = conn.listener

    @property
    def log(self) -> Any:
        """The real connection's logger."""
        return self.conn.log

    @property
    def clock(self) -> Any:
        """The real connection's clock."""
        return self.conn.clock

    def start_task(self, coro: Any) -> Any:
        """A task the real connection owns."""
        return self.conn.start_task(coro)

    @property
    def draining(self) -> bool:
        """True once the server is stopping."""
        return self.conn.draining

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer."""
        self.conn.write(data)

    def get_write_buffer_size(self) -> int:
        """Bytes queued and not yet handed to the kernel."""
        return self.conn.get_write_buffer_size()

    def is_closing(self) -> bool:
        """True once the real connection is closing."""
        return self.conn.is_closing()

    def write_eof(self) -> None:
        """Half-close after queued bytes."""
        self.conn.write_eof()

    def close(self) -> None:
        """Close after queued bytes."""
        self.conn.close()

    def abort(self) -> None:
        """Close now."""
        self.conn.abort()

    def reset(self, reason: str = "") -> None:
        """Close now with an RST."""
        self.conn.reset(reason)

    @property
    def sockname(self) -> Any:
        """The real connection's local address."""
        return self.conn.sockname

    def connect(
        self, endpoint: Any, protocol_factory: Any, *, ssl: Any = None, server_hostname: Any = None
    ) -> Any:
        """A client connection on the real connection's loop."""
        return self.conn.connect(
            endpoint, protocol_factory, ssl=ssl, server_hostname=server_hostname
        )

    def pause_reading(self) -> None:
        """Stop reading from the peer."""
        self.conn.pause_reading()

    def resume_reading(self) -> None:
        """Read from the peer again."""
        self.conn.resume_reading()

    @property
    def tls(self) -> Any:
        """The wrapped connection's TLS session (None for plaintext)."""
        return self.conn.tls

    @property
    def local_address(self) -> Any:
        """The address the peer connected to."""
        return self.conn.local_address

    def lend_socket(self) -> None:
        """Never: the fault must see every byte."""
        return

    def reclaim_socket(self) -> bool:
        """Nothing was lent."""
        return False

    def hold(self) -> Callable[[], None]:
        """A hold on the real connection."""
        return self.conn.hold()

    def annotate(self, **fields: Any) -> None:
        """Fields for the real connection's connection_closed line."""
        self.conn.annotate(**fields)

    def watch(self, fd: int, callback: Callable[[], object], writable: bool = False) -> FdWatch:
        """A watch the real connection owns."""
        return self.conn.watch(fd, callback, writable)


class SessionProxy(StreamSession):
    """The session the server drives: forwards every callback to the inner session."""

    def __init__(self, inner: StreamSession) -> None:
        self.inner = inner

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def shutdown_requested(self) -> None:
        self.inner.shutdown_requested()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)


class WrappingHandler(Handler):
    """A handler that serves through an inner handler named by the ``wraps`` option.

    Each connection gets its own ``random.Random``, seeded from ``seed`` and the
    connection's number within this handler (0, 1, ...), so timings repeat run after run.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        from portd.handlers.registry import load_handler

        inner = load_handler(settings["wraps"])
        self.inner = inner(defaults(inner.options))
        self.opened = 0

    def next_random(self) -> random.Random:
        """The random source of the next connection."""
        index, self.opened = self.opened, self.opened + 1
        # Not for security: reproducible fault timings.
        return random.Random(f"{self.settings.get('seed', 0)}:{index}")  # noqa: S311

    def busy_response(self) -> bytes | None:
        return self.inner.busy_response()  # a full listener answers as the inner would

    def abort_connections(self) -> None:
        self.inner.abort_connections()

    def close(self) -> None:
        self.inner.close()
