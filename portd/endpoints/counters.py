"""What the kernel counted on a stream socket: the bytes a connection carried when portd
did not carry them itself (a program held the socket as its stdin and stdout).

TCP keeps the counts in TCP_INFO, read in one consistent snapshot: bytes received
(``tcpi_bytes_received``, Linux 4.1), and bytes written as those sent once
(``tcpi_bytes_sent`` less ``tcpi_bytes_retrans``, Linux 4.19) plus those not sent yet
(``tcpi_notsent_bytes``). Sequence-number counts take a FIN for one byte; the
connection's state says which FINs there were (after a reset the state no longer
tells, and a count may be one off). A unix-domain socket keeps no counts, so the
question is asked of the socket and one that cannot answer gets None, whatever its kind.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

TCP_INFO_BYTES = 216  # up to and including tcpi_bytes_retrans (linux/tcp.h)
_RECEIVED = struct.Struct("=Q")  # tcpi_bytes_received
_NOT_SENT = struct.Struct("=I")  # tcpi_notsent_bytes
_SENT_RETRANSMITTED = struct.Struct("=QQ")  # tcpi_bytes_sent, tcpi_bytes_retrans
RECEIVED_AT, NOT_SENT_AT, SENT_AT = 128, 144, 200
# tcpi_state values (include/net/tcp_states.h) after the peer's FIN, and after our own.
PEER_FIN_STATES = frozenset({6, 7, 8, 9, 11})  # TIME_WAIT CLOSE CLOSE_WAIT LAST_ACK CLOSING
OWN_FIN_STATES = frozenset({4, 5, 6, 7, 9, 11})  # FIN_WAIT1 FIN_WAIT2 TIME_WAIT CLOSE ...


def kernel_byte_counts(sock: Any) -> tuple[int, int] | None:
    """``(bytes received from the peer, bytes written to it)`` over the socket's whole
    life, or None when the kernel does not count them for this socket."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    except (OSError, ValueError):  # EOPNOTSUPP (unix), EBADF, a closed socket object
        return None
    if len(info) < TCP_INFO_BYTES:  # a kernel before 4.19
        return None
    state = info[0]
    (received,) = _RECEIVED.unpack_from(info, RECEIVED_AT)
    (not_sent,) = _NOT_SENT.unpack_from(info, NOT_SENT_AT)
    sent, retransmitted = _SENT_RETRANSMITTED.unpack_from(info, SENT_AT)
    if not_sent and state in OWN_FIN_STATES:
        not_sent -= 1  # our FIN, queued behind what is not sent yet
    return received - (state in PEER_FIN_STATES), sent - retransmitted + not_sent
