"""Creating and binding IP sockets: every option portd sets on them lives here.

One function per socket kind sets its options, each with its reason. Binding a spec
that opens several sockets (``*``, a host name with IPv4 and IPv6 addresses) is all or
nothing and gives every socket the same port, retrying when port 0 was asked for and
the kernel's choice is taken in the other family.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from portd.endpoints.base import DEFAULT_BACKLOG, ProtocolName, SocketOptions
from portd.endpoints.inet import InetAddress
from portd.errors import AddressInUseError, AddressNotAvailableError, BindError, PrivilegedPortError
from portd.privileges import check_port_allowed

SAME_PORT_ATTEMPTS = 32
DEFAULT_OPTIONS = SocketOptions()
NO_FAMILY_ERRNOS = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})


def open_tcp_socket(
    address: InetAddress,
    backlog: int = DEFAULT_BACKLOG,
    *,
    listen: bool = True,
    reuse_port: bool = False,
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
        if reuse_port:
            # Asked for (workers with a socket each): the kernel spreads connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


def open_udp_socket(address: InetAddress, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking UDP socket. The caller owns (and closes) it.

    No SO_REUSEADDR: on UDP it would let another socket co-bind the port and steal
    datagrams. SO_REUSEPORT only when asked for: Linux lets only sockets of the same
    user join the group, so no other user can take a share of the datagrams.

    Raises:
        OSError: from socket() or bind(), unchanged.
    """
    sock = socket.socket(address.family, socket.SOCK_DGRAM)
    try:
        if reuse_port:  # asked for (workers with a socket each): the kernel spreads senders
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _set_v6only(sock, address)
        sock.bind(address.sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_v6only(sock: socket.socket, address: InetAddress) -> None:
    if address.family == socket.AF_INET6:
        # Explicit, never the host's net.ipv6.bindv6only: "*" opens its own IPv4 socket.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def open_listener_sockets(
    addresses: Sequence[InetAddress],
    protocol: ProtocolName,
    label: str,
    options: SocketOptions = DEFAULT_OPTIONS,
    *,
    skip_missing_ipv6: bool = False,
) -> list[socket.socket]:
    """Open one socket per address, all with the same port, or none at all.

    Args:
        addresses: from InetEndpoint.resolve; all carry the same port (0: kernel's choice).
        protocol: tcp or udp.
        label: names the listener in error messages.
        options: backlog, listen (False binds TCP sockets without listening, see
            open_tcp_socket), reuse_port (SO_REUSEPORT: one socket per worker process).
        skip_missing_ipv6: leave out IPv6 addresses when the kernel has no IPv6
            (used for ``*``, where IPv6 is best effort).

    Returns:
        The sockets, owned by the caller.

    Raises:
        PrivilegedPortError, AddressInUseError, AddressNotAvailableError, BindError.
    """
    port = addresses[0].port
    check_port_allowed(port, label)
    for _attempt in range(SAME_PORT_ATTEMPTS):
        try:
            opened = _open_same_port(addresses, protocol, options, skip_missing_ipv6)
        except _PortTakenElsewhereError:
            continue
        except _AddressFailedError as failed:
            raise _bind_error(failed.error, protocol, label, failed.address) from failed.error
        if not opened:  # every address was IPv6 and the kernel has none
            raise AddressNotAvailableError(f"{label}: this host has no IPv6 support")
        return opened
    raise AddressInUseError(
        f"{label}: no port number was free in every address family after "
        f"{SAME_PORT_ATTEMPTS} attempts"
    )


class _PortTakenElsewhereError(Exception):
    """The kernel's chosen port is busy for a later address: pick again."""


class _AddressFailedError(Exception):
    """Carries the OSError of one address out of the all-or-nothing loop."""

    def __init__(self, address: InetAddress, error: OSError) -> None:
        super().__init__(address, error)
        self.address = address
        self.error = error


def _open_same_port(
    addresses: Sequence[InetAddress],
    protocol: ProtocolName,
    options: SocketOptions,
    skip_missing_ipv6: bool,
) -> list[socket.socket]:
    opened: list[socket.socket] = []
    port = addresses[0].port
    try:
        for address in addresses:
            target = _with_port(address, port) if opened else address
            try:
                sock = (
                    open_tcp_socket(
                        target,
                        options.backlog,
                        listen=options.listen,
                        reuse_port=options.reuse_port,
                    )
                    if protocol == "tcp"
                    else open_udp_socket(target, reuse_port=options.reuse_port)
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


def _with_port(address: InetAddress, port: int) -> InetAddress:
    return InetAddress(address.family, (address.sockaddr[0], port, *address.sockaddr[2:]))


def _bind_error(
    exc: OSError, protocol: ProtocolName, label: str, address: InetAddress
) -> BindError:
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
