"""The line a worker and its parent talk over: JSON documents, one per line, on a
unix stream socketpair the worker inherits.

The parent sends the worker everything it serves with first (the bootstrap: the config
text, which inherited descriptor is what, the worker's slot), then questions
(``{"ask": N, "op": "status"}``). The worker says when it serves (``ready``), answers
(``{"reply": N, "result": ...}``), and last of all reports its final numbers
(``final``), so the daemon's counters keep what an exiting worker counted.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Mapping
from typing import Any, cast

MAX_MESSAGE_BYTES = 64 << 20  # a bootstrap carries the config (at most 16 MiB) and more
Message = dict[str, Any]


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as its line."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def read_first(sock: socket.socket) -> tuple[Message, bytes]:
    """Block until the first message (the bootstrap) is in; return it and what
    followed it.

    Raises:
        ConnectionError: the parent closed the line first, or sent too much.
    """
    buffer = b""
    while b"\n" not in buffer:
        chunk = sock.recv(1 << 20)
        if not chunk or len(buffer) > MAX_MESSAGE_BYTES:
            raise ConnectionError("the parent closed the worker's channel before its bootstrap")
        buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    message: Message = json.loads(line)
    return message, rest


class LineProtocol(asyncio.Protocol):
    """Messages in, messages out; ``on_message`` sees each, ``on_lost`` the end."""

    def __init__(
        self,
        on_message: Callable[[Message], None],
        on_lost: Callable[[], None],
        pending: bytes = b"",
    ) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.buffer = pending
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.buffer:
            self.data_received(b"")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n")) >= 0:
            line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
            self.on_message(json.loads(line))
        if len(self.buffer) > MAX_MESSAGE_BYTES and self.transport is not None:
            self.transport.abort()  # a peer that never ends its line must not grow us

    def send(self, message: Mapping[str, Any]) -> None:
        """Queue one message (dropped once the line is closed)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(message))

    def close(self) -> None:
        """Close the line after what is queued."""
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_lost()
