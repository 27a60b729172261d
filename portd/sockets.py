"""Creating and binding listening sockets: every socket option portd sets lives here.

One function per socket kind sets its options, each with its reason. Binding a spec
that opens several sockets (``*``, a host name with IPv4 and IPv6 addresses) is all or
nothing and gives every socket the same port, retrying when port 0 was asked for and
the kernel's choice is taken in the other family.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from portd.binds import Protocol, SocketAddress
from portd.errors import AddressInUseError, AddressNotAvailableError, BindError, PrivilegedPortError
from portd.privileges import check_port_allowed

DEFAULT_BACKLOG = 1024
SAME_PORT_ATTEMPTS = 32
NO_FAMILY_ERRNOS = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})


def open_tcp_socket(
    address: SocketAddress, backlog: int = DEFAULT_BACKLOG, *, listen: bool = True
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket. The caller owns (and closes) it.

    ``listen=False`` leaves it bound and not listening (the ``refuse`` handler): connects
    are refused, and without SO_REUSEADDR no other socket can take the port meanwhile.

    Raises:
        OSError: from socket(), bind() or listen(), unchanged (see open_listener_sockets).
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        if address.port and listen:
            # Restart through TIME_WAIT without waiting for old connections to expire. Not
            # for port 0: the kernel's choice is a fresh port anyway, and with the option
            # Linux searches only part of the range, so thousands of binds turn quadratic.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Small replies (echo, HTTP heads) go out at once; accepted sockets inherit it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _set_v6only(sock, address)
        sock.bind(address.sockaddr)
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def open_udp_socket(address: SocketAddress) -> socket.socket:
    """A bound, non-blocking UDP socket. The caller owns (and closes) it.

    No SO_REUSEADDR: on UDP it would let another socket co-bind the port and steal
    datagrams.

    Raises:
        OSError: from socket() or bind(), unchanged.
    """
    sock = socket.socket(address.family, socket.SOCK_DGRAM)
    try:
        _set_v6only(sock, address)
        sock.bind(address.sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_v6only(sock: socket.socket, address: SocketAddress) -> None:
    if address.family == socket.AF_INET6:
        # Explicit, never the host's net.ipv6.bindv6only: "*" opens its own IPv4 socket.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def open_listener_sockets(
    addresses: Sequence[SocketAddress],
    protocol: Protocol,
    label: str,
    backlog: int = DEFAULT_BACKLOG,
    *,
    skip_missing_ipv6: bool = False,
    listen: bool = True,
) -> list[socket.socket]:
    """Open one socket per address, all with the same port, or none at all.

    Args:
        addresses: from resolve_bind; all carry the same port (0: kernel's choice).
        protocol: tcp or udp.
        label: names the listener in error messages.
        backlog: TCP listen queue length.
        skip_missing_ipv6: leave out IPv6 addresses when the kernel has no IPv6
            (used for ``*``, where IPv6 is best effort).
        listen: False binds TCP sockets without listening (see open_tcp_socket).

    Returns:
        The sockets, owned by the caller.

    Raises:
        PrivilegedPortError, AddressInUseError, AddressNotAvailableError, BindError.
    """
    port = addresses[0].port
    check_port_allowed(port, label)
    for _attempt in range(SAME_PORT_ATTEMPTS):
        try:
            return _open_same_port(addresses, protocol, backlog, skip_missing_ipv6, listen)
        except _PortTakenElsewhereError:
            continue
        except _AddressFailedError as failed:
            raise _bind_error(failed.error, protocol, label, failed.address) from failed.error
    raise AddressInUseError(
        f"{label}: no port number was free in every address family after "
        f"{SAME_PORT_ATTEMPTS} attempts"
    )


class _PortTakenElsewhereError(Exception):
    """The kernel's chosen port is busy for a later address: pick again."""


class _AddressFailedError(Exception):
    """Carries the OSError of one address out of the all-or-nothing loop."""

    def __init__(self, address: SocketAddress, error: OSError) -> None:
        super().__init__(address, error)
        self.address = address
        self.error = error


def _open_same_port(
    addresses: Sequence[SocketAddress],
    protocol: Protocol,
    backlog: int,
    skip_missing_ipv6: bool,
    listen: bool,
) -> list[socket.socket]:
    opened: list[socket.socket] = []
    port = addresses[0].port
    try:
        for address in addresses:
            target = _with_port(address, port) if opened else address
            try:
                sock = (
                    open_tcp_socket(target, backlog, listen=listen)
                    if protocol == "tcp"
                    else open_udp_socket(target)
                )
            except OSError as exc:
                if (
                    skip_missing_ipv6
                    and address.family == socket.AF_INET6
                    and exc.errno in NO_FAMILY_ERRNOS
                ):
                    continue
                if opened and port != addresses[0].port and exc.errno == errno.EADDRINUSE:
                    raise _PortTakenElsewhereError from exc
                raise _AddressFailedError(target, exc) from exc
            opened.append(sock)
            port = sock.getsockname()[1]
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def _with_port(address: SocketAddress, port: int) -> SocketAddress:
    return SocketAddress(address.family, (address.sockaddr[0], port, *address.sockaddr[2:]))


def _bind_error(exc: OSError, protocol: Protocol, label: str, address: SocketAddress) -> BindError:
    where = f"{label}: {address} ({protocol})"
    if exc.errno == errno.EADDRINUSE:
        from portd.inspect.owner import find_port_owner

        owner = find_port_owner(protocol, address)
        held = f" by {owner}" if owner else ""
        return AddressInUseError(f"{where} is already in use{held}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return AddressNotAvailableError(f"{where}: address not available on this host")
    if exc.errno in NO_FAMILY_ERRNOS:
        return AddressNotAvailableError(f"{where}: this host has no IPv6 support")
    if exc.errno == errno.EACCES:
        return PrivilegedPortError(f"{where}: permission denied ({exc.strerror})")
    return BindError(f"{where}: cannot bind: {exc.strerror}")


def bound_addresses(sockets: Sequence[socket.socket]) -> list[SocketAddress]:
    """What the sockets are really bound to (port 0 resolved).

    The family comes from the sockname's shape (4 fields: IPv6): ``sock.family`` builds
    an enum each time, which adds up over 10,000 listeners.
    """
    found = []
    for sock in sockets:
        name = sock.getsockname()
        found.append(SocketAddress(socket.AF_INET6 if len(name) == 4 else socket.AF_INET, name))
    return found
