"""``portd doctor [HOST:]PORT``: why a port cannot be reached, as a short report of
findings, each with its evidence and a remedy.

This module gathers the facts once (sockets, owners, addresses, connect tests, kernel
settings, firewall, /etc/services), in that order so the tests' own connections are
not mistaken for the service's; findings.py judges them and report.py prints them.
Nothing here needs root: without it, the firewall and other users' processes are
reported as not checked rather than guessed.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from portd.endpoints.base import ProtocolName
from portd.endpoints.inet import format_host_port
from portd.inspect.firewall import Decision, Packet, Ruleset, decide, read_ruleset
from portd.inspect.holders import Holders, systemd_unit, user_name
from portd.inspect.kernel import PortSettings, listen_counters, port_settings
from portd.inspect.probe import Attempt
from portd.inspect.reachability import Address, local_addresses, localhost_order, probe, resolve
from portd.inspect.sockdiag import ALL_STATES, BOUND_INACTIVE, InetSocket, inet_sockets

EX_BLOCKED = 1


class Target(NamedTuple):
    """What was asked: ``host`` is ``*`` for every local address."""

    host: str
    port: int
    protocol: ProtocolName

    def __str__(self) -> str:
        where = (
            "every local address" if self.host == "*" else format_host_port(self.host, self.port)
        )
        return f"{self.protocol} port {self.port} on {where}"


class Owner(NamedTuple):
    """A process holding a socket."""

    pid: int
    fd: int
    program: str
    unit: str | None

    def __str__(self) -> str:
        unit = f", unit {self.unit}" if self.unit else ""
        return f"pid {self.pid} ({self.program}{unit})"


class PortSocket(NamedTuple):
    """A socket on the asked port, with its owners."""

    kernel: InetSocket
    owners: tuple[Owner, ...]
    user: str | None

    @property
    def where(self) -> str:
        """``127.0.0.1:8080``, ``[::]:8080``, ``*:8080`` (dual-stack), as ss writes it."""
        from portd.inspect.ports import show_address

        return f"{show_address(self.kernel.address, self.kernel.v6only)}:{self.kernel.port}"

    def covers(self, address: Address) -> bool:
        """Whether a connection to ``address`` reaches this socket (as the kernel matches)."""
        mine = self.kernel.address
        if mine == address.address:
            return True
        if mine == "0.0.0.0":
            return address.family == 4
        if mine == "::":
            return address.family == 6 or self.kernel.v6only is False
        return False

    def owner_text(self, user: bool = True) -> str:
        """``pid 42 (nginx, unit nginx.service), user www-data`` (or who is not visible)."""
        who = ", ".join(str(owner) for owner in self.owners) or "process not visible"
        return f"{who}, user {self.user}" if self.user and user else who


class Facts(NamedTuple):
    """Everything doctor learned, before judging it."""

    target: Target
    listeners: tuple[PortSocket, ...]
    bound: tuple[PortSocket, ...]  # bound TCP sockets that never listened
    connections: tuple[PortSocket, ...]  # other sockets whose local port is the port
    other_protocol: tuple[PortSocket, ...]  # listeners of the other protocol on it
    addresses: tuple[Address, ...]
    attempts: dict[Address, Attempt]
    localhost: tuple[str, ...]
    settings: PortSettings
    counters: tuple[dict[str, int], dict[str, int]]  # before and after the connect tests
    ruleset: Ruleset | None
    decisions: dict[tuple[Address, bool], Decision]  # (address, from this host)
    timeout_s: float

    @property
    def remote(self) -> bool:
        """The host asked about is not this one: only the connect test means anything."""
        return not any(address.local for address in self.addresses)


def gather(target: Target, timeout_s: float) -> Facts:
    """Collect the facts about ``target``.

    Raises:
        DiagnosisError: the kernel's tables or this host's addresses cannot be read.
        HostNotFoundError: HOST does not resolve.
    """
    sockets = _port_sockets(target)
    local = local_addresses()
    addresses = local if target.host == "*" else resolve(target.host, target.protocol, local)
    before = listen_counters()
    attempts = probe(addresses, target.protocol, target.port, timeout_s)
    after = listen_counters()
    ruleset = read_ruleset() if any(address.local for address in addresses) else None
    listening, bound, connections, other = sockets
    return Facts(target, listening, bound, connections, other, tuple(addresses), attempts,
                 tuple(localhost_order(target.protocol)), port_settings(), (before, after),
                 ruleset, _decisions(ruleset, target, addresses), timeout_s)  # fmt: skip


def _port_sockets(target: Target) -> tuple[tuple[PortSocket, ...], ...]:
    other_protocol: ProtocolName = "udp" if target.protocol == "tcp" else "tcp"
    kernel = [entry for entry in inet_sockets(("tcp", "udp"), ALL_STATES | BOUND_INACTIVE)
              if entry.port == target.port]  # fmt: skip
    holders = Holders({entry.inode for entry in kernel if entry.inode})
    units: dict[int, str | None] = {}

    def owned(entry: InetSocket) -> PortSocket:
        owners = []
        for holder in holders.of(entry.inode) if entry.inode else []:
            if holder.pid not in units:
                units[holder.pid] = systemd_unit(holder.pid)
            owners.append(Owner(holder.pid, holder.fd, holder.program, units[holder.pid]))
        return PortSocket(entry, tuple(owners), user_name(entry.uid) if entry.inode else None)

    mine = [entry for entry in kernel if entry.protocol == target.protocol]
    return (
        tuple(owned(e) for e in mine if e.listening),
        tuple(owned(e) for e in mine if e.protocol == "tcp" and e.state == "UNCONN"),
        tuple(owned(e) for e in mine if e.state not in ("LISTEN", "UNCONN")),
        tuple(owned(e) for e in kernel if e.protocol == other_protocol and e.listening),
    )


def _decisions(ruleset: Ruleset | None, target: Target,
               addresses: list[Address]) -> dict[tuple[Address, bool], Decision]:  # fmt: skip
    """Judge each local address as this host's connect sends it and, unless it is a
    loopback address, as another host's would arrive."""
    if ruleset is None or ruleset.judge is None:
        return {}
    decisions = {}
    for address in addresses:
        if not address.local:
            continue
        for from_loopback in (True, False) if not address.loopback else (True,):
            packet = Packet(address.family, target.protocol, target.port, address.address,
                            from_loopback)  # fmt: skip
            decisions[(address, from_loopback)] = decide(ruleset.judge(packet))
    return decisions


def run_doctor(text: str, protocol: ProtocolName, as_json: bool, timeout_s: float) -> int:
    """Diagnose, print the report, and return 1 when a finding blocks connections.

    Raises:
        BindSyntaxError: TEXT is not ``[HOST:]PORT`` (exit 64).
        HostNotFoundError: HOST does not resolve (exit 1).
        DiagnosisError: the diagnosis could not run (exit 69).
    """
    from portd.endpoints.inet import parse_inet
    from portd.errors import UsageError
    from portd.inspect import findings, report

    spec = parse_inet(text, protocol)
    if spec.port == 0:
        raise UsageError(f"doctor needs a port from 1 to 65535, got {text!r}")
    facts = gather(Target(spec.host, spec.port, protocol), timeout_s)
    found = findings.judge(facts)
    code = EX_BLOCKED if any(finding.severity == "blocks" for finding in found) else 0
    not_checked = findings.not_checked(facts, os.geteuid() == 0)
    if as_json:
        report.print_json(facts, found, not_checked, code)
    else:
        report.print_text(facts, found, not_checked, code)
    return code
