"""What the kernel counted on a stream socket: the bytes a connection carried when portd
did not carry them itself (a program held the socket as its stdin and stdout).

TCP keeps the counts in TCP_INFO (``tcpi_bytes_received``, ``tcpi_bytes_acked``, since
Linux 4.1 and 4.6), and SIOCOUTQ says what is written and not yet acknowledged. Both
count sequence numbers, so a FIN counts one; the connection's state says which FINs
there were (after a reset the state no longer tells, and a count may be one off). A
unix-domain socket keeps no counts, so the question is asked of the socket and one
that cannot answer gets None, whatever its kind.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

TCP_INFO_BYTES = 136  # up to and including tcpi_bytes_received (linux/tcp.h)
_ACKED_AND_RECEIVED = struct.Struct("=QQ")
_OFFSET = 120  # tcpi_bytes_acked, then tcpi_bytes_received
_COUNT = struct.Struct("i")
# tcpi_state values (include/net/tcp_states.h) after the peer's FIN, and after our own.
PEER_FIN_STATES = frozenset({6, 7, 8, 9, 11})  # TIME_WAIT CLOSE CLOSE_WAIT LAST_ACK CLOSING
OWN_FIN_STATES = frozenset({4, 5, 6, 7, 9, 11})  # FIN_WAIT1 FIN_WAIT2 TIME_WAIT CLOSE ...


def kernel_byte_counts(sock: Any) -> tuple[int, int] | None:
    """``(bytes received from the peer, bytes the peer acknowledged)`` over the socket's
    whole life, or None when the kernel does not count them for this socket."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    except (OSError, ValueError):  # EOPNOTSUPP (unix), EBADF, a closed socket object
        return None
    if len(info) < _OFFSET + _ACKED_AND_RECEIVED.size:
        return None
    acked, received = _ACKED_AND_RECEIVED.unpack_from(info, _OFFSET)
    try:  # SIOCOUTQ: written, not yet acknowledged (our FIN included once queued)
        (unacked,) = _COUNT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))
    except OSError:
        unacked = 0
    state = info[0]
    return (
        received - (state in PEER_FIN_STATES),
        acked + unacked - (state in OWN_FIN_STATES),
    )
