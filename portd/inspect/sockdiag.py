"""The kernel's socket tables, read the way ``ss`` reads them: sock_diag over netlink.

One dump per protocol and family gives every socket of this network namespace with
its state, addresses, queues (for a listener: the accept queue's fill and its backlog),
owner uid and inode, with no process scan and no root. ``/proc/net`` is the fallback
when netlink is refused (the same sockets, but a listener's backlog is unknown there).

Standard library only (socket, struct): ``portd ports`` starts in milliseconds.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

from portd.endpoints.base import ProtocolName
from portd.errors import DiagnosisError

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
HEADER = struct.Struct("=IHHII")
INET_REQUEST = struct.Struct("=BBBxI")
INET_MESSAGE = struct.Struct("=BBBB2s2s16s16sI8sIIIII")
UNIX_REQUEST = struct.Struct("=BBxxIII8s")
UNIX_MESSAGE = struct.Struct("=BBBxI8s")
ATTRIBUTE = struct.Struct("=HH")
INET_DIAG_SKV6ONLY = 11
UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN, UNIX_DIAG_UID = 0, 2, 4, 7
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER, UDIAG_SHOW_RQLEN, UDIAG_SHOW_UID = 1, 4, 16, 64
IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}

# ss's state names, by the kernel's TCP state number (UDP uses ESTABLISHED and CLOSE).
STATE_NAMES = {
    1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
    6: "TIME-WAIT", 7: "UNCONN", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
    11: "CLOSING", 12: "SYN-RECV",
}  # fmt: skip
# What ss -a asks for: every state (1-12). Bit 13 adds TCP sockets that are bound but
# neither listening nor connected (Linux >= 6.8; older kernels ignore the bit).
ALL_STATES = ((1 << 13) - 1) & ~1
BOUND_INACTIVE = 1 << 13
LISTEN_STATES = (1 << 10) | (1 << 7)
UNIX_KINDS = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", 5: "seqpacket"}
NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: match a socket by its addresses alone


class InetSocket(NamedTuple):
    """One TCP or UDP socket as the kernel reports it (addresses without brackets)."""

    protocol: ProtocolName
    family: socket.AddressFamily
    state: str
    address: str
    port: int
    peer_address: str
    peer_port: int
    recv_q: int
    send_q: int | None  # a listener's backlog; None when read from /proc/net
    uid: int
    inode: int
    v6only: bool | None  # IPv6 sockets only: False means it takes IPv4 too

    @property
    def listening(self) -> bool:
        """A TCP listener or a bound, unconnected UDP socket."""
        return self.state == ("LISTEN" if self.protocol == "tcp" else "UNCONN")


class UnixSocket(NamedTuple):
    """One unix-domain socket; ``path`` is ``@name`` for an abstract one, ``""`` unnamed."""

    kind: str
    state: str
    path: str
    inode: int
    peer_inode: int
    recv_q: int
    send_q: int
    uid: int | None


def inet_sockets(
    protocols: tuple[ProtocolName, ...] = ("tcp", "udp"), states: int = ALL_STATES
) -> list[InetSocket]:
    """Every TCP/UDP socket of this network namespace whose state is in ``states``.

    Raises:
        DiagnosisError: neither netlink nor /proc/net could be read (exit 69).
    """
    from portd.inspect import procnet

    found: list[InetSocket] = []
    try:
        with _netlink() as sock:
            for protocol in protocols:
                for family in (socket.AF_INET, socket.AF_INET6):
                    found.extend(_dump_inet(sock, protocol, family, states))
    except OSError as exc:
        return procnet.inet_sockets(protocols, states, exc)
    return found


def tcp_socket(
    family: socket.AddressFamily, local: tuple[str, int], remote: tuple[str, int]
) -> InetSocket | None:
    """The one TCP socket of this network namespace with these two ends, or None.

    An exact lookup (one request, one answer; ``ss`` dumps instead), so it costs the same
    on a host with a million sockets. It finds sockets no process holds any more (an
    orphan in FIN-WAIT-1 has inode 0) and TIME-WAIT ones.

    Raises:
        DiagnosisError: neither netlink nor /proc/net could be read.
    """
    from portd.inspect import procnet

    ends = struct.pack("!HH", local[1], remote[1])
    ends += socket.inet_pton(family, local[0]).ljust(16, b"\0")
    ends += socket.inet_pton(family, remote[0]).ljust(16, b"\0")
    request = INET_REQUEST.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES)
    request += ends + struct.pack("=III", 0, NO_COOKIE, NO_COOKIE)
    try:
        with _netlink() as sock:
            found = [_inet_socket("tcp", family, body) for body in _request(sock, request, 0)]
    except OSError as exc:
        found = procnet.inet_sockets(("tcp",), ALL_STATES, exc)
    wanted = (local, remote)
    for entry in found:  # a lookup may fall back to a listener: check both ends
        ours = ((entry.address, entry.port), (entry.peer_address, entry.peer_port))
        if entry.family == family and entry.state != "LISTEN" and ours == wanted:
            return entry
    return None


def unix_sockets(states: int = ALL_STATES) -> list[UnixSocket]:
    """Every unix-domain socket whose state is in ``states`` (LISTEN_STATES: ss -lx).

    Raises:
        DiagnosisError: neither netlink nor /proc/net/unix could be read (exit 69).
    """
    from portd.inspect import procnet

    show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN | UDIAG_SHOW_UID
    request = UNIX_REQUEST.pack(socket.AF_UNIX, 0, states, 0, show, b"")
    try:
        with _netlink() as sock:
            return [_unix(body) for body in _dump(sock, request)]
    except OSError as exc:
        return procnet.unix_sockets(states, exc)


def _netlink() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)


def _dump_inet(
    sock: socket.socket, protocol: ProtocolName, family: socket.AddressFamily, states: int
) -> Iterator[InetSocket]:
    request = INET_REQUEST.pack(family, IPPROTO[protocol], 0, states) + bytes(48)
    for body in _dump(sock, request):
        yield _inet_socket(protocol, family, body)


def _inet_socket(protocol: ProtocolName, family: socket.AddressFamily, body: bytes) -> InetSocket:
    fields = INET_MESSAGE.unpack_from(body)
    size = 4 if family == socket.AF_INET else 16
    v6only = _attributes(body[INET_MESSAGE.size :]).get(INET_DIAG_SKV6ONLY)
    return InetSocket(
        protocol, family, STATE_NAMES.get(fields[1], str(fields[1])),
        socket.inet_ntop(family, fields[6][:size]), int.from_bytes(fields[4], "big"),
        socket.inet_ntop(family, fields[7][:size]), int.from_bytes(fields[5], "big"),
        fields[11], fields[12], fields[13], fields[14],
        bool(v6only[0]) if v6only and family == socket.AF_INET6 else None,
    )  # fmt: skip


def _unix(body: bytes) -> UnixSocket:
    _family, kind, state, inode, _cookie = UNIX_MESSAGE.unpack_from(body)
    found = _attributes(body[UNIX_MESSAGE.size :])
    raw = found.get(UNIX_DIAG_NAME, b"").decode(errors="replace")
    path = "@" + raw[1:] if raw[:1] == "\0" else raw
    peer = struct.unpack("=I", found[UNIX_DIAG_PEER])[0] if UNIX_DIAG_PEER in found else 0
    queues = struct.unpack("=II", found[UNIX_DIAG_RQLEN]) if UNIX_DIAG_RQLEN in found else (0, 0)
    uid = struct.unpack("=I", found[UNIX_DIAG_UID])[0] if UNIX_DIAG_UID in found else None
    return UnixSocket(UNIX_KINDS.get(kind, str(kind)), STATE_NAMES.get(state, str(state)),
                      path.rstrip("\0"), inode, peer, queues[0], queues[1], uid)  # fmt: skip


def _dump(sock: socket.socket, request: bytes) -> Iterator[bytes]:
    """Send one dump request; yield each answer's body until the kernel says done.

    Raises:
        OSError: the kernel refused the request (an NLMSG_ERROR).
    """
    return _request(sock, request, NLM_F_DUMP)


def _request(sock: socket.socket, request: bytes, flags: int) -> Iterator[bytes]:
    """Send one request; yield each answer's body (a lookup that is not a dump has one
    answer, or none when nothing matches: ENOENT).

    Raises:
        OSError: the kernel refused the request (an NLMSG_ERROR).
    """
    sock.send(HEADER.pack(HEADER.size + len(request), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | flags, 1, 0) + request)  # fmt: skip
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + HEADER.size <= len(data):
            length, kind, _flags, _seq, _pid = HEADER.unpack_from(data, offset)
            body = data[offset + HEADER.size : offset + length]
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
                if code and not (code == errno.ENOENT and not flags & NLM_F_DUMP):
                    raise OSError(code, f"sock_diag: {os.strerror(code)}")
                return
            yield body
            if not flags & NLM_F_DUMP:
                return
            offset += (length + 3) & ~3
        if not data:
            raise DiagnosisError("sock_diag: the kernel closed the dump early")


def _attributes(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + ATTRIBUTE.size <= len(data):
        length, kind = ATTRIBUTE.unpack_from(data, offset)
        if length < ATTRIBUTE.size:
            break
        found[kind] = data[offset + ATTRIBUTE.size : offset + length]
        offset += (length + 3) & ~3
    return found
