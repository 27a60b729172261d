"""The kernel settings that decide whether a port can be bound and reached: the
privileged threshold, the ephemeral range and its reserved ports, somaxconn, what a
full accept queue does, and the accept-queue overflow counters.

All are per network namespace and readable without root. ``listener_warnings`` turns
them into the one-line warnings ``portd check`` prints and ``portd serve`` logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from portd.endpoints.inet import InetAddress

if TYPE_CHECKING:
    from portd.config import Config

PROC_SYS = Path("/proc/sys")
NETSTAT = Path("/proc/net/netstat")
OVERFLOW_COUNTERS = ("ListenOverflows", "ListenDrops")


class PortSettings(NamedTuple):
    """The sysctls that concern one port (None where a file is missing or unreadable)."""

    unprivileged_start: int | None
    ephemeral: tuple[int, int] | None
    reserved: tuple[tuple[int, int], ...]
    somaxconn: int | None
    abort_on_overflow: bool | None

    def is_ephemeral(self, port: int) -> bool:
        """Inside ip_local_port_range and not in ip_local_reserved_ports."""
        if self.ephemeral is None or not self.ephemeral[0] <= port <= self.ephemeral[1]:
            return False
        return not in_ranges(port, self.reserved)

    def is_privileged(self, port: int) -> bool:
        """Below ip_unprivileged_port_start: binding it needs CAP_NET_BIND_SERVICE."""
        return self.unprivileged_start is not None and 0 < port < self.unprivileged_start


class ListenerWarning(NamedTuple):
    """A setting that will hurt one listener: a log event name and a sentence."""

    listener: str
    event: str
    text: str

    def __str__(self) -> str:
        return f'listener "{self.listener}": {self.text}'


def read_sysctl(name: str) -> str | None:
    """``net.core.somaxconn`` -> its value as text, None when unreadable."""
    try:
        return (PROC_SYS / name.replace(".", "/")).read_text(encoding="ascii").strip()
    except OSError:
        return None


def port_settings() -> PortSettings:
    """Read every setting once."""
    start = read_sysctl("net.ipv4.ip_unprivileged_port_start")
    span = (read_sysctl("net.ipv4.ip_local_port_range") or "").split()
    somaxconn = read_sysctl("net.core.somaxconn")
    abort = read_sysctl("net.ipv4.tcp_abort_on_overflow")
    return PortSettings(
        int(start) if start else None,
        (int(span[0]), int(span[1])) if len(span) == 2 else None,
        parse_port_ranges(read_sysctl("net.ipv4.ip_local_reserved_ports") or ""),
        int(somaxconn) if somaxconn else None,
        abort == "1" if abort else None,
    )


def parse_port_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """``8000-8100,9090`` -> ((8000, 8100), (9090, 9090)); the kernel's own format."""
    ranges: list[tuple[int, int]] = []
    for part in text.replace(" ", "").split(","):
        if part:
            low, _, high = part.partition("-")
            ranges.append((int(low), int(high or low)))
    return tuple(ranges)


def in_ranges(port: int, ranges: Iterable[tuple[int, int]]) -> bool:
    """True when ``port`` lies in one of ``ranges``."""
    return any(low <= port <= high for low, high in ranges)


def reserve_command(ports: Sequence[int], settings: PortSettings) -> str:
    """The sysctl line that adds ``ports`` to ip_local_reserved_ports, keeping what is
    reserved already (writing the file replaces the whole list)."""
    merged = sorted({*settings.reserved, *((port, port) for port in ports)})
    text = ",".join(str(low) if low == high else f"{low}-{high}" for low, high in merged)
    return f"sysctl -w net.ipv4.ip_local_reserved_ports={text}"


def listen_counters() -> dict[str, int]:
    """TcpExt ListenOverflows and ListenDrops: connections this namespace's kernel dropped
    because an accept queue was full (and for any reason, resp.), since it started."""
    try:
        lines = NETSTAT.read_text(encoding="ascii").splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            counters = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {name: int(counters[name]) for name in OVERFLOW_COUNTERS if name in counters}
    return {}


def ephemeral_text(port: int, settings: PortSettings) -> str:
    """The warning for a port inside the ephemeral range, with the sysctl that fixes it."""
    assert settings.ephemeral is not None
    low, high = settings.ephemeral
    return (
        f"port {port} is in the ephemeral range {low}-{high} and not reserved: an outgoing "
        f"connection can take it before the listener binds; reserve it: "
        f"{reserve_command([port], settings)}"
    )


def backlog_text(backlog: int, somaxconn: int) -> str:
    """The warning for a backlog the kernel will cut to somaxconn."""
    return (
        f"backlog {backlog} is above net.core.somaxconn ({somaxconn}): the kernel queues at "
        f"most {somaxconn}; raise it: sysctl -w net.core.somaxconn={backlog}"
    )


def listener_warnings(config: Config) -> list[ListenerWarning]:
    """What the kernel's settings will do to each listener of ``config``: a fixed port in
    the ephemeral range that is not reserved, a TCP backlog above somaxconn."""
    settings = port_settings()
    warnings: list[ListenerWarning] = []
    for listener in config.listeners:
        ports = {a.port for a in listener.addresses if isinstance(a, InetAddress)}
        port = min(ports, default=0)  # one port per listener (0: the kernel's choice)
        if port and settings.is_ephemeral(port):
            text = ephemeral_text(port, settings)
            warnings.append(ListenerWarning(listener.name, "port_in_ephemeral_range", text))
        somaxconn = settings.somaxconn
        backlog = listener.socket_options.backlog
        if listener.protocol == "tcp" and somaxconn and backlog > somaxconn:
            text = backlog_text(backlog, somaxconn)
            warnings.append(ListenerWarning(listener.name, "backlog_above_somaxconn", text))
    return warnings
