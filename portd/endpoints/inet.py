"""The inet kind: TCP and UDP over IPv4 and IPv6, spelled ``[HOST:]PORT``.

Forms and the sockets each opens (every IPv6 socket is opened with IPV6_V6ONLY=1,
set explicitly, so the host's net.ipv6.bindv6only sysctl never changes behaviour):

=====================  ==================================================================
``PORT`` or ``*:PORT``  two sockets: ``0.0.0.0:PORT`` (IPv4) and ``[::]:PORT`` (IPv6 only);
                        the IPv6 one is skipped when the kernel has no IPv6.
``1.2.3.4:PORT``        one IPv4 socket.
``[::1]:PORT``          one IPv6 socket (v6-only); ``[fe80::1%eth0]`` takes a scope.
``name:PORT``           one socket per address ``name`` resolves to (``localhost`` gives
                        ``127.0.0.1`` and ``[::1]``).
=====================  ==================================================================

PORT is 0-65535 or an /etc/services name for the listener's protocol (``http``,
``echo``). Port 0 asks the kernel to choose; a bind that opens several sockets gets the
same port number on all of them. ``tcp:`` and ``udp:`` prefixes (see
portd.endpoints.parse) are explicit spellings of the same grammar.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from sys import intern as _intern
from typing import Any, NamedTuple

from portd.endpoints.base import SOCKET_TYPES, ProtocolName, SocketOptions
from portd.errors import BindSyntaxError

WILDCARD = "*"
MAX_PORT = 65535
WILDCARD_HOSTS = ("0.0.0.0", "::")


class InetAddress(NamedTuple):
    """One concrete IP address a socket binds: family plus the sockaddr tuple."""

    family: socket.AddressFamily
    sockaddr: tuple[str, int] | tuple[str, int, int, int]

    @property
    def host(self) -> str:
        """The address part, without brackets."""
        return self.sockaddr[0]

    @property
    def port(self) -> int:
        """The port part."""
        return self.sockaddr[1]

    @property
    def is_wildcard(self) -> bool:
        """True for 0.0.0.0 and :: (getaddrinfo gives them in this canonical form)."""
        return self.host in WILDCARD_HOSTS

    @property
    def key(self) -> tuple[str, int, str, int]:
        """Identity across reloads and socket activation: family, host and port."""
        return ("inet", self.family, self.host, self.port)

    @property
    def local_only(self) -> bool:
        """True for loopback addresses (127.0.0.0/8, ::1)."""
        import ipaddress  # only the metrics server asks; `portd listen` never does

        return ipaddress.ip_address(self.host.partition("%")[0]).is_loopback

    @property
    def overlap_group(self) -> tuple[str, int]:
        """Only addresses with the same port can overlap."""
        return ("inet", self.port)

    def overlaps(self, other: Any) -> bool:
        """Same family and port, and the same host or a wildcard on either side (IPv4 and
        IPv6 never overlap: IPv6 sockets are v6-only)."""
        if not isinstance(other, InetAddress) or other.family != self.family:
            return False
        if other.port != self.port:
            return False
        return other.host == self.host or self.is_wildcard or other.is_wildcard

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


class InetPeer(tuple[Any, ...]):
    """An IP peer: the very sockaddr tuple accept() or recvfrom() returned, typed.

    Being the tuple itself, it costs one tuple copy per datagram and goes straight back
    to sendto(); ``host``, ``port`` and ``str()`` read it.
    """

    __slots__ = ()
    kind = "inet"

    @property
    def host(self) -> str:
        """The peer's address, without brackets."""
        host: str = self[0]
        return host

    @property
    def port(self) -> int:
        """The peer's port."""
        port: int = self[1]
        return port

    @property
    def source(self) -> str:
        """The address per-source limits count by (IPv4-mapped IPv6 as IPv4)."""
        return source_key(self[0])

    def environment(self, protocol: str, local: Any) -> dict[str, str]:
        """ucspi-tcp's variables for a program serving this peer (``local``: the socket's
        own address, from getsockname()): ``PROTO=TCP``, ``TCPREMOTEIP``, ... (UDP:
        ``PROTO=UDP`` and ``UDP...``, the peer being the datagram's sender)."""
        proto = protocol.upper()
        env = {"PROTO": proto, f"{proto}REMOTEIP": self[0], f"{proto}REMOTEPORT": str(self[1])}
        if local:
            env[f"{proto}LOCALIP"], env[f"{proto}LOCALPORT"] = local[0], str(local[1])
        return env

    def __str__(self) -> str:
        return format_host_port(self[0], self[1])

    def __repr__(self) -> str:
        return f"InetPeer({str(self)!r})"


def inet_peer(sockaddr: tuple[Any, ...]) -> InetPeer:
    """Type a sockaddr tuple as an InetPeer (no conversion)."""
    return tuple.__new__(InetPeer, sockaddr)


def source_key(host: str) -> str:
    """The peer's address as text, IPv4-mapped IPv6 written as IPv4 (cheap: no parsing)."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


class InetEndpoint(NamedTuple):
    """A parsed ``[HOST:]PORT`` for one protocol (immutable; a NamedTuple because it
    imports faster than a dataclass, and ``portd listen`` counts its start-up).

    ``host`` is ``"*"`` for every interface, an address literal (IPv6 without brackets)
    or a host name; ``port`` is a number, 0 meaning the kernel's choice.
    """

    host: str
    port: int
    protocol: ProtocolName = "tcp"

    @property
    def kind(self) -> str:
        """``inet``."""
        return "inet"

    @property
    def is_wildcard(self) -> bool:
        """True when the spec means every interface."""
        return self.host == WILDCARD

    @property
    def is_ephemeral(self) -> bool:
        """True for port 0 (the kernel chooses)."""
        return self.port == 0

    def with_port(self, port: int) -> InetEndpoint:
        """The same host with another port (used to report the port the kernel chose)."""
        return InetEndpoint(self.host, port, self.protocol)

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)

    def resolve(self, families: tuple[socket.AddressFamily, ...] = ()) -> tuple[InetAddress, ...]:
        """The concrete addresses this opens, in bind order (IPv4 first).

        Args:
            families: restrict to these address families (``-4``/``-6``); empty means any.

        Raises:
            BindSyntaxError: the host name does not resolve, or nothing is left after
                filtering by family.
        """
        if self.is_wildcard:
            found = [
                InetAddress(socket.AF_INET, ("0.0.0.0", self.port)),
                InetAddress(socket.AF_INET6, ("::", self.port, 0, 0)),
            ]
        else:
            found = _getaddrinfo(self)
        if families:
            found = [address for address in found if address.family in families]
        if not found:
            names = "/".join("IPv4" if f == socket.AF_INET else "IPv6" for f in families)
            raise BindSyntaxError(f"{self} has no {names} address")
        return tuple(found)

    def open_sockets(
        self, addresses: Sequence[Any], options: SocketOptions, label: str
    ) -> list[socket.socket]:
        """All or nothing, one port for all (see portd.endpoints.inet_sockets)."""
        from portd.endpoints.inet_sockets import open_listener_sockets

        return open_listener_sockets(
            addresses, self.protocol, label, options, skip_missing_ipv6=self.is_wildcard
        )

    def bound_addresses(self, sockets: Sequence[socket.socket]) -> list[InetAddress]:
        """What the sockets are really bound to (port 0 resolved).

        The family comes from the sockname's shape (4 fields: IPv6): ``sock.family``
        builds an enum each time, which adds up over 10,000 listeners.
        """
        found = []
        for sock in sockets:
            name = sock.getsockname()
            family = socket.AF_INET6 if len(name) == 4 else socket.AF_INET
            found.append(InetAddress(family, name))
        return found

    def describe_bound(self, addresses: Sequence[Any]) -> str:
        """``127.0.0.1:40123``: the endpoint with the port the kernel chose."""
        return str(self.with_port(addresses[0].port)) if addresses else str(self)

    def name_part(self) -> str:
        """``127.0.0.1-8080``, ``any-80``."""
        return f"{'any' if self.is_wildcard else self.host}-{self.port}"

    def unit_lines(self, addresses: Sequence[Any], options: SocketOptions) -> list[str]:
        """One ListenStream=/ListenDatagram= per address, v6-only as portd opens them."""
        kind = "ListenStream" if self.protocol == "tcp" else "ListenDatagram"
        lines = [f"{kind}={address}" for address in addresses]
        lines += [
            "# IPv6 sockets are IPv6-only, as portd opens them; '*' lists IPv4 and IPv6 apart.",
            "BindIPv6Only=ipv6-only",
        ]
        if self.protocol == "tcp":
            lines.append(f"Backlog={options.backlog}")
        return lines

    def peer(self, sock: socket.socket, addr: Any) -> InetPeer:
        """The accepted peer's sockaddr, typed; its address text is shared with every
        other connection from the same host (one string, not one per connection)."""
        return tuple.__new__(InetPeer, (_intern(addr[0]), *addr[1:]))

    def datagram_io(self, sock: socket.socket) -> tuple[Any, Any]:
        """recvfrom_into with the sender typed in place; sendto takes the peer as it is."""
        recvfrom_into, make = sock.recvfrom_into, tuple.__new__

        def receive(buffer: memoryview) -> tuple[int, InetPeer]:
            size, addr = recvfrom_into(buffer)
            return size, make(InetPeer, addr)

        return receive, sock.sendto

    def datagram_peek(self, sock: socket.socket) -> Any:
        """``peek(buffer)``: the next datagram's size and sender, left in the socket."""
        recvfrom_into, make, flags = sock.recvfrom_into, tuple.__new__, socket.MSG_PEEK

        def peek(buffer: memoryview) -> tuple[int, InetPeer]:
            size, addr = recvfrom_into(buffer, 0, flags)
            return size, make(InetPeer, addr)

        return peek

    def release(self, sockets: Sequence[socket.socket]) -> None:
        """Nothing is left behind by an IP socket."""

    def upstream_problem(self) -> str | None:
        """An upstream names a host: ``*:PORT`` (or a bare PORT) is every interface."""
        if self.is_wildcard:
            return f"expected HOST:PORT to connect to, not {self}"
        return None

    async def open_stream(
        self, loop: Any, protocol_factory: Any, *, ssl: Any = None, server_hostname: Any = None
    ) -> Any:
        """``loop.create_connection`` (TCP_NODELAY is set by the loop)."""
        hostname = (server_hostname or self.host) if ssl is not None else None
        return await loop.create_connection(
            protocol_factory, self.host, self.port, ssl=ssl, server_hostname=hostname
        )

    def connect_datagram(self) -> socket.socket:
        """A UDP socket connected to the first address the host resolves to."""
        address = self.resolve()[0]
        sock = socket.socket(address.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address.sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock


def format_host_port(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_peer(peer: tuple[object, ...] | None) -> str:
    """``host:port`` of a socket peer (any sockaddr tuple), ``?`` when unknown."""
    if not peer:
        return "?"
    return format_host_port(str(peer[0]), int(peer[1]))  # type: ignore[call-overload]


def parse_inet(text: str, protocol: ProtocolName = "tcp") -> InetEndpoint:
    """Parse ``[HOST:]PORT``.

    Args:
        text: the bind as the user wrote it (no scheme prefix).
        protocol: the listener's protocol, used to look up service names.

    Returns:
        The endpoint; a bare PORT becomes ``*:PORT``.

    Raises:
        BindSyntaxError: the text does not fit the grammar or names an unknown service.
    """
    text = text.strip()
    if not text:
        raise BindSyntaxError("empty bind; expected [HOST:]PORT")
    if not text.isprintable():
        raise BindSyntaxError(f"bad bind {text!r}; it holds a control character")
    host, port_text = _split_host_port(text)
    return InetEndpoint(host, parse_port(port_text, protocol), protocol)


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise BindSyntaxError(f"bad bind {text!r}; expected [IPv6]:PORT")
        host = text[1:end]
        _check_ipv6(host, text)
        return host, text[end + 2 :]
    if text.count(":") > 1:
        raise BindSyntaxError(f"bad bind {text!r}; put IPv6 addresses in brackets: [::1]:PORT")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        return WILDCARD, text
    if not host:
        raise BindSyntaxError(f"bad bind {text!r}; HOST is empty (omit ':' for every interface)")
    return host, port_text


def _check_ipv6(host: str, text: str) -> None:
    try:
        socket.inet_pton(socket.AF_INET6, host.split("%", maxsplit=1)[0])
    except (OSError, ValueError):
        raise BindSyntaxError(f"bad bind {text!r}; {host!r} is not an IPv6 address") from None


def parse_port(text: str, protocol: ProtocolName = "tcp") -> int:
    """A port number 0-65535, or an /etc/services name resolved for ``protocol``.

    Raises:
        BindSyntaxError: out of range, or no such service for that protocol.
    """
    # isdigit() alone admits digits such as "²" that int() rejects or reads as decimal.
    if text.isascii() and text.isdigit():
        # int() refuses over 4300 digits, so compare lengths before converting.
        digits = text.lstrip("0") or "0"
        if len(digits) > len(str(MAX_PORT)) or int(digits) > MAX_PORT:
            raise BindSyntaxError(f"port {text} is out of range; expected 0-{MAX_PORT}")
        return int(digits)
    try:
        return socket.getservbyname(text, protocol)
    except (OSError, ValueError):  # ValueError: NUL or unencodable text in the name
        raise BindSyntaxError(_unknown_service_message(text, protocol)) from None


def _unknown_service_message(name: str, protocol: ProtocolName) -> str:
    other: ProtocolName = "udp" if protocol == "tcp" else "tcp"
    try:
        port = socket.getservbyname(name, other)
    except (OSError, ValueError):
        return f"bad port {name!r}; expected 0-{MAX_PORT} or a service name from /etc/services"
    return f"service {name!r} is {port}/{other} in /etc/services, not {protocol}"


def _literal_address(endpoint: InetEndpoint) -> InetAddress | None:
    """An IPv4 or scope-less IPv6 literal as getaddrinfo would give it; None otherwise."""
    try:
        packed = socket.inet_pton(socket.AF_INET, endpoint.host)
    except OSError:
        pass
    else:
        host = socket.inet_ntop(socket.AF_INET, packed)
        return InetAddress(socket.AF_INET, (host, endpoint.port))
    if "%" in endpoint.host:
        return None  # a scope needs the resolver to map the interface name
    try:
        packed = socket.inet_pton(socket.AF_INET6, endpoint.host)
    except OSError:
        return None
    host = socket.inet_ntop(socket.AF_INET6, packed)
    return InetAddress(socket.AF_INET6, (host, endpoint.port, 0, 0))


def _getaddrinfo(endpoint: InetEndpoint) -> list[InetAddress]:
    literal = _literal_address(endpoint)
    if literal is not None:  # no resolver call for 127.0.0.1 or [::1] (10,000 listeners)
        return [literal]
    try:
        infos = socket.getaddrinfo(
            endpoint.host,
            endpoint.port,
            type=SOCKET_TYPES[endpoint.protocol],
            flags=socket.AI_PASSIVE,
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise BindSyntaxError(f"cannot resolve host {endpoint.host!r}: {reason}") from None
    found: list[InetAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = InetAddress(family, sockaddr)  # type: ignore[arg-type]
        if address not in found:
            found.append(address)
    found.sort(key=lambda address: address.family != socket.AF_INET)
    return found
