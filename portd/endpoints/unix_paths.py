"""Unix-socket paths on disk: what may be removed, and which directories are safe.

The one rule for every unix socket portd binds (listeners and the control socket):
portd removes nothing but a stale socket, that is a socket file nobody accepts on
(connect() gives ECONNREFUSED). A live socket is "in use" (naming its holder's pid from
SO_PEERCRED), and anything else at the path (a regular file, a symlink, a directory) is
never touched, whoever portd runs as.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from typing import Any

from portd.errors import AddressInUseError, BindError, NotASocketError, UnsafeDirectoryError

PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


# Looked up once: the daemon reads a unix peer's credentials for every connection.
_unpack = PEERCRED.unpack
_SOL_SOCKET, _SO_PEERCRED, _SIZE = socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of a connected unix socket's peer (SO_PEERCRED); ``sock`` is a
    socket or what a transport offers for one (asyncio's TransportSocket)."""
    credentials: tuple[int, int, int] = _unpack(sock.getsockopt(_SOL_SOCKET, _SO_PEERCRED, _SIZE))
    return credentials


def clear_stale_socket(path: str, label: str) -> bool:
    """Make room to bind ``path``: remove it only if it is a stale socket.

    Returns:
        True when a stale socket was removed, False when nothing was there.

    Raises:
        AddressInUseError: a process accepts on the socket (its pid named when known).
        NotASocketError: the path holds something else (never removed).
        BindError: the path cannot be examined (EACCES, ...).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BindError(f"{label}: cannot examine {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a socket"
        raise NotASocketError(
            f"{label}: {path} exists and is {kind}; portd removes only stale sockets"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # nobody accepts: left by a process that died
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:  # a datagram socket: ask it the datagram way
                if _datagram_socket_is_live(path):
                    raise AddressInUseError(f"{label}: {path} is in use") from None
            else:
                raise BindError(f"{label}: cannot examine {path}: {exc.strerror}") from exc
        else:
            pid = peer_credentials(probe)[0]
            held = f" by pid {pid}" if pid > 0 else ""
            raise AddressInUseError(f"{label}: {path} is in use{held}")
    try:
        os.unlink(path)  # noqa: PTH108 - a stale socket, nothing else
    except FileNotFoundError:
        return False
    return True


def _datagram_socket_is_live(path: str) -> bool:
    """A bound datagram socket takes a connect(); a stale one refuses it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False
    return True


def check_private_directory(path: str, label: str) -> None:
    """Refuse a socket directory that another user could use to swap the socket.

    The directory must belong to root or to this process's user, and must not be
    writable by group or others unless it is sticky (as /tmp: nobody can then remove or
    rename an entry they do not own).

    Raises:
        UnsafeDirectoryError: naming the owner or the mode that is unsafe.
        BindError: the directory cannot be examined.
    """
    directory = os.path.dirname(os.path.abspath(path))  # noqa: PTH100, PTH120
    try:
        info = os.stat(directory)  # noqa: PTH116
    except OSError as exc:
        raise BindError(f"{label}: cannot examine {directory}: {exc.strerror}") from exc
    if info.st_uid not in (0, os.geteuid()):
        raise UnsafeDirectoryError(
            f"{label}: {directory} belongs to uid {info.st_uid}, who could replace the socket; "
            "use a directory of root or of the user portd runs as"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise UnsafeDirectoryError(
            f"{label}: {directory} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}), "
            "who could replace the socket; use a directory only its owner can write"
        )
