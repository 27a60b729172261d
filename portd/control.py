"""The local control socket: ``portd status`` asks the running daemon for its numbers.

A Unix stream socket, mode 0600 (or under a 0700 runtime directory); a client sends
one line (``status``) and reads one JSON document back. Nothing on it changes the
daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from portd.errors import EX_UNAVAILABLE, PortdError

DEFAULT_SOCKET = "/run/portd/control.sock"  # RuntimeDirectory=portd in the shipped units
MAX_REQUEST = 1024


class ControlError(PortdError):
    """No daemon answers on the control socket, or it is held by another one."""

    exit_code = EX_UNAVAILABLE


def resolve_socket_path(setting: str, environ: dict[str, str] | None = None) -> str:
    """``auto``: ``$RUNTIME_DIRECTORY/control.sock`` under systemd, else off (``""``)."""
    if setting != "auto":
        return setting
    runtime = (os.environ if environ is None else environ).get("RUNTIME_DIRECTORY", "")
    return os.path.join(runtime.split(":")[0], "control.sock") if runtime else ""  # noqa: PTH118


class _ControlProtocol(asyncio.Protocol):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in self.buffer and len(self.buffer) < MAX_REQUEST:
            return
        command = self.buffer.split(b"\n", 1)[0].strip()
        if command == b"status":
            reply: dict[str, Any] = self.snapshot()
        else:
            reply = {"error": f"unknown command {command[:40].decode(errors='replace')!r}"}
        self.transport.write(json.dumps(reply).encode() + b"\n")
        self.transport.close()


async def serve_control(
    path: str, snapshot: Callable[[], dict[str, Any]]
) -> asyncio.AbstractServer:
    """Listen on ``path`` (0600; its directory is made 0700 when missing).

    Raises:
        ControlError: another process answers on ``path``.
    """
    directory = os.path.dirname(path) or "."  # noqa: PTH120
    os.makedirs(directory, mode=0o700, exist_ok=True)  # noqa: PTH103
    _remove_stale(path)
    previous = os.umask(0o177)
    try:
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: _ControlProtocol(snapshot), path
        )
    except OSError as exc:
        raise ControlError(f"cannot open control socket {path}: {exc.strerror}") from exc
    finally:
        os.umask(previous)
    return server


def _remove_stale(path: str) -> None:
    if not os.path.exists(path):  # noqa: PTH110
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # noqa: PTH108 - left by a daemon that died
            return
    raise ControlError(f"control socket {path} is in use by another portd")


def query(path: str, command: str = "status", timeout_s: float = 5.0) -> dict[str, Any]:
    """Ask the daemon; return its JSON reply.

    Raises:
        ControlError: nothing answers there.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as exc:
            raise ControlError(f"no daemon answers on {path}: {exc.strerror or exc}") from None
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    return reply


def close_control(server: asyncio.AbstractServer | None, path: str) -> None:
    """Stop answering and remove the socket file."""
    if server is None:
        return
    server.close()
    with contextlib.suppress(OSError):
        os.unlink(path)  # noqa: PTH108
