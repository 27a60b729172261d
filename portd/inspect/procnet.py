"""The fallback reader of the kernel's socket tables: ``/proc/net/{tcp,tcp6,udp,udp6,unix}``.

Used only when sock_diag over netlink is refused (a kernel without it, a sandbox that
blocks it). The sockets are the same; what /proc/net lacks is a listener's backlog
(``send_q`` is None) and whether an IPv6 socket is v6-only.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from portd.endpoints.base import ProtocolName
from portd.errors import DiagnosisError
from portd.inspect.sockdiag import STATE_NAMES, UNIX_KINDS, InetSocket, UnixSocket

PROC_NET = Path("/proc/net")
UNIX_LISTENING_FLAG = 0x10000  # __SO_ACCEPTCON
UNIX_STATES = {1: 7, 3: 1}  # SS_UNCONNECTED -> CLOSE, SS_CONNECTED -> ESTABLISHED


def inet_sockets(
    protocols: tuple[ProtocolName, ...], states: int, cause: OSError | None = None
) -> list[InetSocket]:
    """The TCP/UDP sockets listed in /proc/net whose state bit is in ``states``.

    Raises:
        DiagnosisError: the files cannot be read (``cause`` is why netlink failed).
    """
    found: list[InetSocket] = []
    for protocol in protocols:
        for family, name in ((socket.AF_INET, protocol), (socket.AF_INET6, protocol + "6")):
            for fields in _rows(PROC_NET / name, cause, missing_ok=family == socket.AF_INET6):
                state = int(fields[3], 16)
                if states & (1 << state):
                    found.append(_inet(protocol, family, fields))
    return found


def unix_sockets(states: int, cause: OSError | None = None) -> list[UnixSocket]:
    """The unix-domain sockets of /proc/net/unix whose state bit is in ``states``.

    Raises:
        DiagnosisError: the file cannot be read.
    """
    found: list[UnixSocket] = []
    for fields in _rows(PROC_NET / "unix", cause):
        flags, kind, raw_state, inode = int(fields[3], 16), int(fields[4], 16), fields[5], fields[6]
        state = 10 if flags & UNIX_LISTENING_FLAG else UNIX_STATES.get(int(raw_state, 16), 7)
        if states & (1 << state):
            path = fields[7] if len(fields) > 7 else ""
            found.append(UnixSocket(UNIX_KINDS.get(kind, str(kind)), STATE_NAMES[state],
                                    path, int(inode), 0, 0, 0, None))  # fmt: skip
    return found


def _rows(path: Path, cause: OSError | None, missing_ok: bool = False) -> list[list[str]]:
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()[1:]
    except FileNotFoundError:
        if missing_ok:  # no IPv6 in this kernel
            return []
        raise _unreadable(path, cause) from None
    except OSError as exc:
        raise _unreadable(path, cause or exc) from None
    return [line.split() for line in lines if line.strip()]


def _unreadable(path: Path, cause: OSError | None) -> DiagnosisError:
    why = f" (netlink: {cause.strerror or cause})" if cause is not None else ""
    return DiagnosisError(f"cannot read the kernel's socket tables: {path} is unreadable{why}")


def _inet(protocol: ProtocolName, family: socket.AddressFamily, fields: list[str]) -> InetSocket:
    local, peer = _address(family, fields[1]), _address(family, fields[2])
    send_q, recv_q = (int(part, 16) for part in fields[4].split(":"))
    state = int(fields[3], 16)
    listening = protocol == "tcp" and state == 10
    return InetSocket(
        protocol, family, STATE_NAMES.get(state, str(state)), local[0], local[1], peer[0],
        peer[1], recv_q, None if listening else send_q, int(fields[7]), int(fields[9]), None,
    )  # fmt: skip


def _address(family: socket.AddressFamily, text: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080): each 32-bit word is in host byte order."""
    hex_address, hex_port = text.split(":")
    raw = bytes.fromhex(hex_address)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = struct.pack(f"!{len(words)}I", *words)
    return socket.inet_ntop(family, packed), int(hex_port, 16)
