"""Helpers for daemons with workers: configs, who the workers are, who holds a socket."""

from __future__ import annotations

import os
import socket
import textwrap
from collections import Counter
from collections.abc import Iterable
from typing import Any

import psutil

from tests.support import Daemon


def config(*listeners: str, daemon: str = "workers = 2") -> str:
    """A config from listener bodies (one [[listener]] each) and a [daemon] body."""
    parts = [f"[daemon]\n{textwrap.dedent(daemon)}"]
    parts += [f"[[listener]]\n{textwrap.dedent(body)}" for body in listeners]
    return "\n".join(parts) + "\n"


def listener(name: str, handler: str = "echo", **keys: Any) -> str:
    """A listener body on 127.0.0.1:0 with extra keys."""
    body = f'name = "{name}"\nbind = "127.0.0.1:0"\nhandler = "{handler}"\n'
    for key, value in keys.items():
        body += f"{key} = {_toml(value)}\n"
    return body


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def worker_pids(daemon: Daemon) -> dict[int, int]:
    """Slot -> pid of the worker that last said it serves there."""
    return {
        event["worker"]: event["pid"]
        for event in daemon.events
        if event.get("event") == "worker_ready"
    }


def echo(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` and read as many bytes back (fewer if the peer closes)."""
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(len(data) - len(received))
        if not chunk:
            break
        received += chunk
    return received


def holders(pids: Iterable[int], port: int) -> Counter[int]:
    """How many established connections to ``port`` each process holds (its accepted,
    server-side sockets)."""
    held: Counter[int] = Counter()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port:
                held[pid] += 1
    return held


def listening_sockets(pid: int, port: int) -> set[int]:
    """The inodes of the listening TCP sockets on ``port`` that ``pid`` holds."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as file:  # noqa: PTH123
            for line in list(file)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                    listening.add(int(fields[9]))
    return {inode for inode in _socket_inodes(pid) if inode in listening}


def _socket_inodes(pid: int) -> list[int]:
    inodes = []
    for name in os.listdir(f"/proc/{pid}/fd"):  # noqa: PTH208
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")  # noqa: PTH115
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    return inodes
