"""systemd integration: adopting sockets passed by socket activation, and sd_notify.

Neither needs libsystemd: socket activation is three environment variables and file
descriptors from 3 on (sd_listen_fds(3)); notification is one datagram to the
NOTIFY_SOCKET path (sd_notify(3)).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from portd.endpoints.parse import address_of

if TYPE_CHECKING:
    from portd.config import ListenerConfig

LISTEN_FDS_START = 3
ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class InheritedSocket(NamedTuple):
    """A socket passed by the service manager, with its FileDescriptorName."""

    name: str
    sock: socket.socket

    @property
    def protocol(self) -> str:
        """tcp (stream) or udp (datagram); anything else is never matched to a listener."""
        return {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}.get(self.sock.type, "?")

    @property
    def address(self) -> Any:
        """The address it is bound to, as its endpoint kind names it."""
        found = address_of(self.sock.family, self.sock.getsockname())
        return found[1] if found is not None else None

    @property
    def kind(self) -> str:
        """The endpoint kind it belongs to (``inet``, ``unix``), or "?"."""
        found = address_of(self.sock.family, self.sock.getsockname())
        return found[0] if found is not None else "?"


def take_inherited_sockets(
    environ: MutableMapping[str, str] | None = None,
) -> list[InheritedSocket]:
    """Adopt the sockets passed to this process, and unset the variables that passed them.

    The variables are removed whether or not they were meant for us, so no child
    process ever sees them. Sockets meant for another process (LISTEN_PID is not ours)
    are left alone.

    Returns:
        The inherited sockets, owned by the caller, non-blocking and close-on-exec.
    """
    environ = os.environ if environ is None else environ
    pid, count, names = (environ.pop(name, None) for name in ACTIVATION_VARIABLES)
    if pid is None or count is None or not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        return []
    labels = names.split(":") if names else []
    inherited = []
    for index in range(int(count)):
        fd = LISTEN_FDS_START + index
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket: nothing portd can serve
            continue
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        label = labels[index] if index < len(labels) else "unknown"
        inherited.append(InheritedSocket(label, sock))
    return inherited


class Notifier:
    """sd_notify(3) messages to the service manager; silent when not run by one."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_interval_s = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        """True when a service manager listens."""
        return bool(self.address)

    def send(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` lines in one datagram (errors are ignored: best effort)."""
        if not self.address:
            return
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
        ):
            sock.sendto("\n".join(fields).encode(), self.address)

    def ready(self, status: str) -> None:
        """Every listener is bound and serving."""
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        """A reload started (RELOADING=1 needs MONOTONIC_USEC since systemd 253)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        """Shutdown started."""
        self.send("STOPPING=1", "STATUS=draining connections")

    def watchdog(self) -> None:
        """The event loop is alive."""
        self.send("WATCHDOG=1")


def _watchdog_interval(environ: MutableMapping[str, str]) -> float | None:
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2  # ping at half the timeout, as sd_watchdog_enabled(3) advises


def match_inherited(
    configs: Sequence[ListenerConfig], inherited: Sequence[InheritedSocket]
) -> dict[str, list[socket.socket]]:
    """Which inherited sockets serve which listener.

    A socket goes to the listener its FileDescriptorName names, if it has that
    listener's protocol and endpoint kind (a unix socket is never served as TCP); the
    rest go by protocol and bound address (``Address.key``). Sockets matching nothing
    are left out of the result for the caller to close.

    Returns:
        Listener name -> its inherited sockets.
    """
    free = list(inherited)
    claimed: dict[str, list[socket.socket]] = {}
    for config in configs:
        named = [s for s in free if s.name == config.name and _fits(s, config)]
        if named:
            claimed[config.name] = [s.sock for s in named]
            free = [s for s in free if s not in named]
    for config in configs:
        if config.name in claimed:
            continue
        wanted = {a.key for a in config.addresses} if not config.endpoint.is_ephemeral else set()
        hits = [
            s
            for s in free
            if s.protocol == config.protocol and s.address is not None and s.address.key in wanted
        ]
        if hits:
            claimed[config.name] = [s.sock for s in hits]
            free = [s for s in free if s not in hits]
    return claimed


def _fits(inherited: InheritedSocket, config: ListenerConfig) -> bool:
    return inherited.protocol == config.protocol and inherited.kind == config.endpoint.kind
