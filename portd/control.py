"""The local control socket: ``portd status`` asks the running daemon for its numbers.

A unix stream socket, created mode 0600 in a directory only its owner can change (made
0700 when missing), or an abstract name when ``control_socket_abstract`` allows it. A
client sends one line (``status``) and reads one JSON document back; nothing on it
changes the daemon. It answers only root and the daemon's own user (SO_PEERCRED), at
most MAX_CLIENTS at once, each given REQUEST_TIMEOUT_S to ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any, cast

from portd.endpoints.unix_paths import (
    check_private_directory,
    clear_stale_socket,
    peer_credentials,
)
from portd.errors import ControlError

DEFAULT_SOCKET = "/run/portd/control.sock"  # RuntimeDirectory=portd in the shipped units
MAX_REQUEST = 1024
MAX_CLIENTS = 16
REQUEST_TIMEOUT_S = 5.0
LABEL = "control socket"


def resolve_socket_path(setting: str, environ: dict[str, str] | None = None) -> str:
    """``auto``: ``$RUNTIME_DIRECTORY/control.sock`` under systemd, else off (``""``)."""
    if setting != "auto":
        return setting
    runtime = (os.environ if environ is None else environ).get("RUNTIME_DIRECTORY", "")
    return os.path.join(runtime.split(":")[0], "control.sock") if runtime else ""  # noqa: PTH118


def socket_address(path: str) -> str:
    """What bind() and connect() take: ``@name`` is the abstract name ``\\0name``."""
    return "\0" + path[1:] if path.startswith("@") else path


class _ControlProtocol(asyncio.Protocol):
    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None
        self.uid = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.clients += 1
        if self.server.clients > MAX_CLIENTS:
            self.transport.abort()  # a flood of clients must not cost the daemon memory
            return
        sock = transport.get_extra_info("socket")
        self.uid = peer_credentials(sock)[1] if sock is not None else -1
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in self.buffer and len(self.buffer) < MAX_REQUEST:
            return
        self.transport.pause_reading()
        command = self.buffer.split(b"\n", 1)[0].strip()
        if self.uid not in (0, os.geteuid()):  # answered after the request: a close with
            # unread input would reset the connection before the client reads why
            self._answer({"error": f"uid {self.uid} may not ask this daemon"})
        elif command == b"status":
            self._answer(self.server.snapshot())
        else:
            self._answer({"error": f"unknown command {command[:40].decode(errors='replace')!r}"})

    def _answer(self, reply: dict[str, Any]) -> None:
        self.transport.write(json.dumps(reply).encode() + b"\n")
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.clients -= 1
        if self.timer is not None:
            self.timer.cancel()


class ControlServer:
    """The running control socket; :meth:`close` stops it and removes its file."""

    def __init__(self, path: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.snapshot = snapshot
        self.clients = 0
        self.server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None  # st_dev, st_ino of our socket file

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            AddressInUseError: another daemon answers there.
            NotASocketError, UnsafeDirectoryError: the path or its directory is not safe to use.
            ControlError: the OS refused the socket.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not self.path.startswith("@"):
                self._prepare_path()
            previous = os.umask(0o177)
            try:
                sock.bind(socket_address(self.path))
            finally:
                os.umask(previous)
            if not self.path.startswith("@"):
                info = os.stat(self.path)  # noqa: PTH116
                self._identity = (info.st_dev, info.st_ino)
            sock.listen(MAX_CLIENTS)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            self.server = await loop.create_unix_server(lambda: _ControlProtocol(self), sock=sock)
        except OSError as exc:
            sock.close()
            self.close()
            raise ControlError(f"cannot open {LABEL} {self.path}: {exc.strerror}") from exc
        except BaseException:
            sock.close()
            raise

    def _prepare_path(self) -> None:
        directory = os.path.dirname(self.path) or "."  # noqa: PTH120
        os.makedirs(directory, mode=0o700, exist_ok=True)  # noqa: PTH103
        check_private_directory(self.path, LABEL)
        clear_stale_socket(self.path, LABEL)

    def close(self) -> None:
        """Stop answering and remove the socket file, if it is still the one we made."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._identity is None:
            return
        identity, self._identity = self._identity, None
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == identity:
                os.unlink(self.path)  # noqa: PTH108


async def serve_control(path: str, snapshot: Callable[[], dict[str, Any]]) -> ControlServer:
    """Listen on ``path`` (see the module docstring); the caller closes it.

    Raises:
        BindError, ControlError: see :meth:`ControlServer.start`.
    """
    server = ControlServer(path, snapshot)
    await server.start()
    return server


def query(path: str, command: str = "status", timeout_s: float = 5.0) -> dict[str, Any]:
    """Ask the daemon; return its JSON reply.

    Raises:
        ControlError: nothing answers there, or the reply is not JSON.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(socket_address(path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as exc:
            raise ControlError(f"no daemon answers on {path}: {exc.strerror or exc}") from None
    try:
        reply: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"{path}: the reply is not a portd status") from None
    if "error" in reply:
        raise ControlError(f"{path}: {reply['error']}")
    return reply
