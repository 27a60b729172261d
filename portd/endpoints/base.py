"""The small protocol every endpoint kind implements, and the values they share.

An *endpoint* is where a listener's sockets live, parsed from text (``127.0.0.1:80``,
``unix:/run/app.sock``); it resolves to one or more concrete *addresses*, one socket
each. The rest of portd sees only this protocol: config checks overlaps and names
listeners with it, reload and socket activation match sockets by ``Address.key``,
``portd units`` asks it for unit-file lines, and the accept path asks it for the
typed *peer* of each connection. A new kind is one module in this package.

Everything here imports fast (no dataclasses, no ipaddress): ``portd listen`` parses
endpoints and counts its start-up in milliseconds.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal, NamedTuple, Protocol

ProtocolName = Literal["tcp", "udp"]  # tcp: a stream socket, udp: datagrams (also on unix)
PROTOCOLS: tuple[ProtocolName, ...] = ("tcp", "udp")
SOCKET_TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
DEFAULT_BACKLOG = 1024


class SocketOptions(NamedTuple):
    """How a listener's sockets are opened, beyond their address.

    ``mode``/``owner`` apply to kinds with files (unix); ``backlog`` and ``listen`` to
    stream sockets. ``listen=False`` binds without listening (the ``refuse`` handler).
    """

    backlog: int = DEFAULT_BACKLOG
    listen: bool = True
    mode: int | None = None
    owner: tuple[int, int] | None = None  # (uid, gid), -1 leaving one unchanged
    reuse_port: bool = False


class Address(Protocol):
    """One concrete socket address of an endpoint."""

    @property
    def family(self) -> socket.AddressFamily:
        """The socket family (AF_INET, AF_INET6, AF_UNIX)."""

    @property
    def sockaddr(self) -> Any:
        """What bind() and connect() take."""

    @property
    def key(self) -> Hashable:
        """Identity of a socket bound here: reload hands a socket over to the listener
        whose address has the same key; socket activation matches inherited sockets by it."""

    @property
    def local_only(self) -> bool:
        """True when only this host can connect (a loopback IP address, a unix socket)."""

    @property
    def overlap_group(self) -> Hashable:
        """Addresses that may overlap share a group (the same port, the same path), so
        checking 10,000 listeners for clashes stays linear."""

    def overlaps(self, other: Address) -> bool:
        """True when a socket here and one at ``other`` cannot both be bound."""


class Peer(Protocol):
    """The other end of a connection, or the sender of a datagram."""

    kind: str

    @property
    def source(self) -> str:
        """What per-source limits count by (an IP address, or a unix uid)."""

    def environment(self, protocol: str, local: Any) -> dict[str, str]:
        """The variables a program serving this peer gets, named as ucspi-tcp and
        ucspi-unix name them (``PROTO``, ``TCPREMOTEIP``, ``UNIXREMOTEPID``, ...);
        ``local`` is the socket's own address (getsockname())."""

    def __str__(self) -> str:
        """How logs name it: ``127.0.0.1:50000``, ``pid 42 uid 1000``."""


class Endpoint(Protocol):
    """Where a listener's sockets live: one kind's parsed, unresolved form."""

    @property
    def kind(self) -> str:
        """The kind's name (``inet``, ``unix``)."""

    @property
    def protocol(self) -> ProtocolName:
        """tcp (stream) or udp (datagrams)."""

    @property
    def is_ephemeral(self) -> bool:
        """True when the kernel picks the address (port 0): a reload keeps the sockets of
        such a listener by its name, since its configured address names no socket."""

    def resolve(self, families: tuple[socket.AddressFamily, ...] = ()) -> tuple[Address, ...]:
        """The addresses to bind, one socket each (may resolve host names: blocking).

        Raises:
            BindSyntaxError: nothing to bind (a name that does not resolve, ...).
        """

    def open_sockets(
        self, addresses: Sequence[Address], options: SocketOptions, label: str
    ) -> list[socket.socket]:
        """Bind one socket per address, all or nothing. The caller owns the sockets.

        Raises:
            BindError: and its kinds, naming ``label`` and the address.
        """

    def bound_addresses(self, sockets: Sequence[socket.socket]) -> Sequence[Address]:
        """What the sockets are really bound to (port 0 resolved)."""

    def describe_bound(self, addresses: Sequence[Address]) -> str:
        """The endpoint as bound, for logs: ``127.0.0.1:40123``, ``*:40123``."""

    def name_part(self) -> str:
        """A piece of the default listener name (``127.0.0.1-8080``)."""

    def unit_lines(self, addresses: Sequence[Address], options: SocketOptions) -> list[str]:
        """``[Socket]`` lines of a systemd socket unit that binds these addresses."""

    def peer(self, sock: socket.socket, addr: Any) -> Peer:
        """The typed peer of an accepted connection (``addr`` from accept())."""

    def datagram_io(
        self, sock: socket.socket
    ) -> tuple[Callable[[memoryview], tuple[int, Peer]], Callable[[bytes, Peer], object]]:
        """``(receive, send)`` for a datagram socket: ``receive(buffer)`` reads one
        datagram into ``buffer`` and returns its size and typed sender; ``send(data,
        peer)`` sends one. Both raise OSError (BlockingIOError when nothing is there)."""

    def datagram_peek(self, sock: socket.socket) -> Callable[[memoryview], tuple[int, Peer]]:
        """``peek(buffer)`` for a datagram socket: like ``receive``, but the datagram stays
        in the socket (a program given the socket reads it itself)."""

    def release(self, sockets: Sequence[socket.socket]) -> None:
        """After the listener's sockets closed for good: remove what binding left behind
        (a unix socket's file), never anything else."""

    def upstream_problem(self) -> str | None:
        """Why this endpoint cannot be connected to as an upstream (``*:80``), or None."""

    async def open_stream(
        self,
        loop: Any,
        protocol_factory: Callable[[], Any],
        *,
        ssl: Any = None,
        server_hostname: str | None = None,
    ) -> tuple[Any, Any]:
        """Connect to this endpoint as a client: ``(transport, protocol)`` from the loop's
        ``create_connection`` family; ``ssl`` (an SSLContext) originates TLS, checked
        against ``server_hostname`` (default: the host; ``localhost`` for a path).

        Raises:
            OSError: refused, unreachable, or the name does not resolve.
        """

    def connect_datagram(self) -> socket.socket:
        """A non-blocking datagram socket connected to this endpoint (may resolve a host
        name: blocking). The caller owns it.

        Raises:
            OSError, BindSyntaxError: it cannot be made or connected.
        """
