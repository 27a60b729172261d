"""Which addresses doctor asks about, and what a connect to each of them does: this host's
addresses (loopback and every interface's, v4 and v6) or those a host name resolves to,
probed all at once (TCP: refused, timed out, connected, with timing; UDP: an empty
datagram, refused or not), and the order ``localhost`` resolves in.
"""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import time
from collections.abc import Sequence
from typing import NamedTuple

from portd.endpoints.base import ProtocolName
from portd.endpoints.inet import InetAddress, format_host_port
from portd.errors import DiagnosisError, HostNotFoundError
from portd.inspect.probe import Attempt, probe_tcp


class Address(NamedTuple):
    """One address doctor asks about."""

    address: str  # without brackets or scope
    family: int  # 4 or 6
    interface: str | None  # the interface it is on, when it is this host's
    local: bool  # one of this host's addresses

    @property
    def loopback(self) -> bool:
        """127.0.0.0/8 or ::1: reachable from this host only."""
        return ipaddress.ip_address(self.address).is_loopback

    def target(self, port: int) -> InetAddress:
        """The sockaddr to connect to (link-local IPv6 with its interface's scope)."""
        if self.family == 4:
            return InetAddress(socket.AF_INET, (self.address, port))
        scope = socket.if_nametoindex(self.interface) if self.interface else 0
        if not ipaddress.ip_address(self.address).is_link_local:
            scope = 0
        return InetAddress(socket.AF_INET6, (self.address, port, 0, scope))

    def show(self, port: int) -> str:
        """``[fe80::1%eth0]:80`` for a link-local address, else ``host:port``."""
        link_local = ipaddress.ip_address(self.address).is_link_local
        if self.family == 6 and self.interface and link_local:
            return f"[{self.address}%{self.interface}]:{port}"
        return format_host_port(self.address, port)


def local_addresses() -> list[Address]:
    """Every address of every interface that is up, loopback first, v4 before v6;
    IPv6 link-local ones (fe80::/10) left out: clients reach services at other addresses.

    Raises:
        DiagnosisError: the interfaces cannot be listed.
    """
    import psutil

    try:
        interfaces = psutil.net_if_addrs()
        up = {name for name, stats in psutil.net_if_stats().items() if stats.isup}
    except (OSError, psutil.Error) as exc:
        raise DiagnosisError(f"cannot list this host's addresses: {exc}") from None
    found = []
    for name, entries in interfaces.items():
        for entry in entries:
            if name not in up or entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = entry.address.split("%")[0]
            if entry.family == socket.AF_INET6 and ipaddress.ip_address(text).is_link_local:
                continue
            found.append(Address(text, 4 if entry.family == socket.AF_INET else 6, name, True))
    return sorted(set(found), key=_address_order)


def _address_order(
    address: Address,
) -> tuple[bool, int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    ip = ipaddress.ip_address(address.address)
    return (not ip.is_loopback, address.family, ip)


def resolve(host: str, protocol: ProtocolName, local: Sequence[Address]) -> list[Address]:
    """The addresses ``host`` names, in the resolver's order, marked when they are local.

    Raises:
        HostNotFoundError: the name does not resolve (exit 1).
    """
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    try:
        infos = socket.getaddrinfo(host, 0, socket.AF_UNSPEC, kind)
    except socket.gaierror as exc:
        raise HostNotFoundError(f"cannot resolve {host!r}: {exc.strerror}") from None
    interfaces = {entry.address: entry.interface for entry in local}
    found: list[Address] = []
    for family, _kind, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0]).split("%")[0]
        is_local = text in interfaces or ipaddress.ip_address(text).is_loopback
        entry = Address(text, 4 if family == socket.AF_INET else 6, interfaces.get(text), is_local)
        if entry not in found:
            found.append(entry)
    return found


def localhost_order(protocol: ProtocolName) -> list[str]:
    """The addresses ``localhost`` resolves to, in the order clients get them."""
    try:
        return [entry.address for entry in resolve("localhost", protocol, [])]
    except HostNotFoundError:
        return []


def probe(addresses: Sequence[Address], protocol: ProtocolName, port: int,
          timeout_s: float) -> dict[Address, Attempt]:  # fmt: skip
    """Connect to each address at once (UDP: send an empty datagram and wait for a
    refusal), each given ``timeout_s``."""
    targets = {address.target(port): address for address in addresses}
    attempts = (probe_tcp(targets, timeout_s) if protocol == "tcp"
                else probe_udp(list(targets), timeout_s))  # fmt: skip
    return {targets[attempt.target]: attempt for attempt in attempts}


def probe_udp(targets: Sequence[InetAddress], timeout_s: float) -> list[Attempt]:
    """One empty datagram to each target from a connected socket: ECONNREFUSED means an
    ICMP port unreachable came back (nothing bound, or a reject rule); a reply is error 0;
    silence is ETIMEDOUT (bound, or dropped: UDP cannot tell)."""
    selector = selectors.DefaultSelector()
    done: list[Attempt] = []
    began = time.monotonic()
    try:
        for target in targets:
            sock = socket.socket(target.family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(target.sockaddr)
                sock.send(b"")
            except OSError as exc:
                sock.close()
                done.append(Attempt(target, exc.errno or errno.EIO, time.monotonic() - began))
                continue
            selector.register(sock, selectors.EVENT_READ, target)
        deadline = began + timeout_s
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _events in selector.select(left):
                answered: socket.socket = key.fileobj  # type: ignore[assignment]
                error = 0
                try:
                    answered.recv(1)
                except OSError as exc:
                    error = exc.errno or errno.EIO
                done.append(Attempt(key.data, error, time.monotonic() - began))
                selector.unregister(answered)
                answered.close()
        for key in list(selector.get_map().values()):
            done.append(Attempt(key.data, errno.ETIMEDOUT, time.monotonic() - began))
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()
    return done
