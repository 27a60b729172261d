"""The one bind grammar, ``[HOST:]PORT``, shared by the CLI, the config file and fixtures.

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
same port number on all of them.
"""

from __future__ import annotations

import socket
from typing import Literal, NamedTuple

from portd.errors import BindSyntaxError

Protocol = Literal["tcp", "udp"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp")
WILDCARD = "*"
MAX_PORT = 65535
SOCKET_TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


class BindSpec(NamedTuple):
    """A parsed ``[HOST:]PORT`` (immutable; a NamedTuple because it imports faster than
    a dataclass, and ``portd listen`` counts its start-up in milliseconds).

    ``host`` is ``"*"`` for every interface, an address literal (IPv6 without brackets)
    or a host name; ``port`` is a number, 0 meaning the kernel's choice.
    """

    host: str
    port: int

    @property
    def is_wildcard(self) -> bool:
        """True when the spec means every interface."""
        return self.host == WILDCARD

    def with_port(self, port: int) -> BindSpec:
        """The same host with another port (used to report the port the kernel chose)."""
        return BindSpec(self.host, port)

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


class SocketAddress(NamedTuple):
    """One concrete address a socket binds: family plus the sockaddr tuple."""

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
        return self.host in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def format_host_port(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_peer(peer: tuple[object, ...] | None) -> str:
    """``host:port`` of a socket peer (any sockaddr tuple), ``?`` when unknown."""
    if not peer:
        return "?"
    return format_host_port(str(peer[0]), int(peer[1]))  # type: ignore[call-overload]


def parse_bind(text: str, protocol: Protocol = "tcp") -> BindSpec:
    """Parse ``[HOST:]PORT``.

    Args:
        text: the bind as the user wrote it.
        protocol: the listener's protocol, used to look up service names.

    Returns:
        The BindSpec; a bare PORT becomes ``*:PORT``.

    Raises:
        BindSyntaxError: the text does not fit the grammar or names an unknown service.
    """
    text = text.strip()
    if not text:
        raise BindSyntaxError("empty bind; expected [HOST:]PORT")
    if not text.isprintable():
        raise BindSyntaxError(f"bad bind {text!r}; it holds a control character")
    host, port_text = _split_host_port(text)
    return BindSpec(host, parse_port(port_text, protocol))


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


def parse_port(text: str, protocol: Protocol = "tcp") -> int:
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


def _unknown_service_message(name: str, protocol: Protocol) -> str:
    others = [p for p in PROTOCOLS if p != protocol]
    for other in others:
        try:
            port = socket.getservbyname(name, other)
        except (OSError, ValueError):
            continue
        return f"service {name!r} is {port}/{other} in /etc/services, not {protocol}"
    return f"bad port {name!r}; expected 0-{MAX_PORT} or a service name from /etc/services"


def resolve_bind(
    spec: BindSpec, protocol: Protocol, families: tuple[socket.AddressFamily, ...] = ()
) -> list[SocketAddress]:
    """The concrete addresses a spec opens, in bind order (IPv4 first).

    Args:
        spec: the parsed bind.
        protocol: tcp or udp (host names may resolve differently per type).
        families: restrict to these address families (``-4``/``-6``); empty means any.

    Returns:
        One SocketAddress per socket to open, without duplicates.

    Raises:
        BindSyntaxError: the host name does not resolve, or nothing is left after
            filtering by family.
    """
    if spec.is_wildcard:
        found = [
            SocketAddress(socket.AF_INET, ("0.0.0.0", spec.port)),
            SocketAddress(socket.AF_INET6, ("::", spec.port, 0, 0)),
        ]
    else:
        found = _getaddrinfo(spec, protocol)
    if families:
        found = [address for address in found if address.family in families]
    if not found:
        names = "/".join("IPv4" if f == socket.AF_INET else "IPv6" for f in families)
        raise BindSyntaxError(f"{spec} has no {names} address")
    return found


def _literal_address(spec: BindSpec) -> SocketAddress | None:
    """An IPv4 or scope-less IPv6 literal as getaddrinfo would give it; None otherwise."""
    try:
        packed = socket.inet_pton(socket.AF_INET, spec.host)
    except OSError:
        pass
    else:
        return SocketAddress(socket.AF_INET, (socket.inet_ntop(socket.AF_INET, packed), spec.port))
    if "%" in spec.host:
        return None  # a scope needs the resolver to map the interface name
    try:
        packed = socket.inet_pton(socket.AF_INET6, spec.host)
    except OSError:
        return None
    return SocketAddress(
        socket.AF_INET6, (socket.inet_ntop(socket.AF_INET6, packed), spec.port, 0, 0)
    )


def _getaddrinfo(spec: BindSpec, protocol: Protocol) -> list[SocketAddress]:
    literal = _literal_address(spec)
    if literal is not None:  # no resolver call for 127.0.0.1 or [::1] (10,000 listeners)
        return [literal]
    try:
        infos = socket.getaddrinfo(
            spec.host, spec.port, type=SOCKET_TYPES[protocol], flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise BindSyntaxError(f"cannot resolve host {spec.host!r}: {reason}") from None
    found: list[SocketAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = SocketAddress(family, sockaddr)  # type: ignore[arg-type]
        if address not in found:
            found.append(address)
    found.sort(key=lambda address: address.family != socket.AF_INET)
    return found
