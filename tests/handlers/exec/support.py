"""What the exec tests share: the loops and byte paths to run on, clients that send and
read, and a look at this process's children in /proc (the in-process test servers
spawn their programs from the test process itself)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WAIT_S = 10.0
LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
# Both ways of carrying the bytes: the socket as the program's stdio, and portd's relay.
PATHS = pytest.mark.parametrize("relay", [False, True], ids=["socket", "relay"])
RESET_ON_CLOSE = b"\1\0\0\0\0\0\0\0"  # SO_LINGER on, 0 s: close() sends an RST


def client(address: Any) -> socket.socket:
    """A connected TCP client with a timeout, so a test that hangs fails instead."""
    return socket.create_connection(address, timeout=WAIT_S)


def read_to_eof(sock: socket.socket) -> bytes:
    """Every byte until the peer's FIN (a reset raises ConnectionResetError)."""
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(address: Any, payload: bytes, *, half_close: bool = True) -> bytes:
    """Send ``payload`` from a thread (then FIN), read everything back."""
    with client(address) as sock:

        def send() -> None:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return read_to_eof(sock)
        finally:
            sender.join(WAIT_S)


def reset(sock: socket.socket) -> None:
    """Close with an RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
    sock.close()


def children(pid: int | None = None) -> list[tuple[int, str]]:
    """``(pid, state)`` of every process whose parent is ``pid`` (default: this one)."""
    parent = os.getpid() if pid is None else pid
    found = []
    for stat in _stats():
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        if int(fields[1]) == parent:
            found.append((int(head.split(" (", 1)[0]), fields[0]))
    return found


def zombies(pid: int | None = None) -> list[int]:
    """Children of ``pid`` (default: this process) that exited and were not reaped."""
    return [child for child, state in children(pid) if state == "Z"]


def _stats() -> Iterator[str]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
