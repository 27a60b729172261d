"""What this process may bind: the privileged-port sysctl and CAP_NET_BIND_SERVICE."""

from __future__ import annotations

from functools import cache

from portd.errors import PrivilegedPortError

UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
CAP_NET_BIND_SERVICE = 10
_DEFAULT_UNPRIVILEGED_PORT_START = 1024


@cache
def unprivileged_port_start() -> int:
    """The lowest port anyone may bind (the sysctl; 1024 where it cannot be read)."""
    try:
        with open(UNPRIVILEGED_PORT_START, encoding="ascii") as file:  # noqa: PTH123 - pathlib costs start-up time
            return int(file.read())
    except (OSError, ValueError):
        return _DEFAULT_UNPRIVILEGED_PORT_START


@cache
def has_capability(bit: int) -> bool:
    """True when the effective capability set of this process holds ``bit``."""
    try:
        with open("/proc/self/status", encoding="utf-8") as file:  # noqa: PTH123
            status = file.read()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def check_port_allowed(port: int, label: str) -> None:
    """Fail early, with the remedies, when ``port`` needs a privilege this process lacks.

    Raises:
        PrivilegedPortError: port is below the sysctl and CAP_NET_BIND_SERVICE is missing.
    """
    start = unprivileged_port_start()
    if port == 0 or port >= start or has_capability(CAP_NET_BIND_SERVICE):
        return
    raise PrivilegedPortError(
        f"{label}: port {port} is privileged (net.ipv4.ip_unprivileged_port_start = {start}) "
        "and this process lacks CAP_NET_BIND_SERVICE; use socket activation (portd.socket), "
        f"AmbientCapabilities=CAP_NET_BIND_SERVICE, or a port >= {start}"
    )
