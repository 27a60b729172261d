"""What ``portd listen`` binds: its sockets, the ``listening on`` line and ``--port-file``,
and the socket files to remove when it stops listening.

A unix socket's file is removed once its sockets are closed, if it is still the file
this process bound (the same inode: a socket another process bound there since is left
alone). The endpoint's own check (remove only a stale socket: nobody accepts on it)
cannot tell here: a thread of portd's own still waiting in select() or recvmsg() on the
socket keeps the kernel's socket alive, so it would look live.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
from collections.abc import Sequence
from typing import Any

from portd.endpoints.base import SocketOptions

PORT_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Listening:
    """The bound sockets of one ``portd listen`` (the caller closes them with close())."""

    def __init__(self, endpoint: Any, sockets: list[socket.socket]) -> None:
        self.endpoint = endpoint
        self.sockets = sockets
        self.addresses: Sequence[Any] = endpoint.bound_addresses(sockets)
        self.files = [_identity(path) for path in socket_paths(self.addresses)]

    @classmethod
    def open(
        cls, endpoint: Any, families: tuple[socket.AddressFamily, ...], backlog: int = 1024
    ) -> Listening:
        """Bind what the command line asks for.

        Raises:
            BindSyntaxError, BindError: the same messages and exit codes as the daemon.
        """
        addresses = endpoint.resolve(families)
        sockets = endpoint.open_sockets(addresses, SocketOptions(backlog), f"listen {endpoint}")
        return cls(endpoint, sockets)

    def announce(self, label: str, port_file: str | None) -> None:
        """The ``listening on`` line, and ``port_file`` (see announce()).

        Raises:
            UsageError: the port file cannot be written.
        """
        announce(self.addresses, label, port_file)

    def close(self) -> None:
        """Stop listening: close the sockets, remove the socket files this process made."""
        for sock in self.sockets:
            sock.close()
        for identity in self.files:
            _remove_if_same(identity)
        self.endpoint.release(self.sockets)


def socket_paths(addresses: Sequence[Any]) -> list[str]:
    """The file paths among bound addresses (unix sockets; not abstract names)."""
    paths: list[str] = [getattr(address, "path", "") for address in addresses]
    return [path for path in paths if path and not path.startswith("@")]


def _identity(path: str) -> tuple[str, int, int]:
    try:
        info = os.lstat(path)
    except OSError:
        return (path, -1, -1)
    return (path, info.st_dev, info.st_ino)


def _remove_if_same(identity: tuple[str, int, int]) -> None:
    path, device, inode = identity
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == (device, inode):
            os.unlink(path)  # noqa: PTH108 - the socket file this process bound


def announce(addresses: Sequence[Any], label: str, port_file: str | None) -> None:
    """The port into ``port_file`` (a unix socket's absolute path, or its @NAME: what a
    script connects to), then ``listening on 127.0.0.1:40123 (tcp)`` on stderr: whoever
    reads that line finds the file written.

    Raises:
        UsageError: the port file cannot be written.
    """
    if port_file:
        port = getattr(addresses[0], "port", None)
        path: str = getattr(addresses[0], "path", "")
        if port is None and not path.startswith("@"):
            path = os.path.abspath(path)  # noqa: PTH100 - the reader's directory may differ
        write_port_file(port_file, path if port is None else port)
    where = ", ".join(str(address) for address in addresses)
    print(f"listening on {where} ({label})", file=sys.stderr, flush=True)


def write_port_file(path: str, port: int | str) -> None:
    """Write ``port`` (a number, or a unix socket's path) to ``path`` atomically, never
    through a planted file or symlink.

    The temporary is created exclusively (O_EXCL|O_NOFOLLOW: an entry someone put there
    first, a symlink included, is never opened) under an unpredictable name in the
    target's directory, then renamed over ``path`` (a symlink at ``path`` itself is
    replaced, not followed).

    Raises:
        UsageError: the file cannot be written (one line naming it).
    """
    import secrets

    from portd.errors import UsageError

    directory, _, name = path.rpartition("/")
    temporary = f"{directory}{'/' if directory else ''}.{name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(temporary, PORT_FILE_FLAGS, 0o644)
        try:
            os.write(fd, os.fsencode(f"{port}\n"))
        finally:
            os.close(fd)
        os.replace(temporary, path)  # noqa: PTH105 - readers never see a half-written file
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        with contextlib.suppress(OSError, ValueError):
            os.unlink(temporary)  # noqa: PTH108
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise UsageError(f"--port-file {path!r}: cannot write it: {reason}") from None
