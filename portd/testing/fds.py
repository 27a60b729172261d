"""Sockets for tests: bound ones to hand to a child process the systemd way.

A server under test started as a subprocess gets its port with no race when the test
binds it first and passes the socket the way systemd does (sd_listen_fds(3)): the
sockets at file descriptors 3, 4, ..., with ``LISTEN_FDS`` (their count),
``LISTEN_PID`` (the child's pid) and ``LISTEN_FDNAMES`` in its environment.

The child's pid exists only after the fork, and CPython's subprocess closes every
descriptor not in ``pass_fds`` after ``preexec_fn`` runs (which is unsafe with threads
anyway). So the child first runs a tiny Python shim (:data:`SHIM`) that moves the
sockets to 3, 4, ..., closes the originals, sets the variables with its own pid and
execs the real command, which keeps that pid.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from portd.endpoints.base import ProtocolName

SHIM = """\
import fcntl, os, sys
names, count = sys.argv[1], int(sys.argv[2])
fds = [int(fd) for fd in sys.argv[3 : 3 + count]]
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + count) for fd in fds]
for index, fd in enumerate(moved):
    os.dup2(fd, 3 + index)
for fd in set(fds) - set(range(3, 3 + count)):
    os.close(fd)
for fd in moved:
    os.close(fd)
os.environ.update(LISTEN_FDS=str(count), LISTEN_PID=str(os.getpid()))
if names:
    os.environ["LISTEN_FDNAMES"] = names
else:
    os.environ.pop("LISTEN_FDNAMES", None)
command = sys.argv[3 + count :]
os.execvp(command[0], command)
"""


def bound_socket(
    bind: str = "127.0.0.1:0", protocol: ProtocolName = "tcp", *, backlog: int = 1024
) -> socket.socket:
    """One bound socket (listening, for tcp), in blocking mode as systemd passes them.

    Args:
        bind: an endpoint naming exactly one address (``127.0.0.1:0``, ``[::1]:0``,
            ``unix:/path``).
        protocol: tcp or udp.
        backlog: the listen queue (tcp).

    Returns:
        The socket; the caller owns it and closes it (``with bound_socket() as sock:``).

    Raises:
        ValueError: the bind names several addresses (``*``, ``localhost``).
        BindSyntaxError, BindError: as for any listener.
    """
    from portd.endpoints.base import SocketOptions
    from portd.endpoints.parse import parse_endpoint

    endpoint = parse_endpoint(bind, protocol)
    addresses = endpoint.resolve()
    if len(addresses) != 1:
        found = ", ".join(str(address) for address in addresses)
        raise ValueError(f"bound_socket({bind!r}) would open {len(addresses)} sockets ({found})")
    sockets: list[socket.socket] = endpoint.open_sockets(
        addresses, SocketOptions(backlog), f"bound_socket({bind!r})"
    )
    sockets[0].setblocking(True)
    return sockets[0]


@dataclass(frozen=True, slots=True)
class ListenFds:
    """How to start a child that finds ``sockets`` at fds 3, 4, ... (socket activation).

    Use :meth:`popen`, or put :attr:`prefix` before any command and pass
    :attr:`pass_fds` to whatever starts it (``asyncio.create_subprocess_exec``).
    The parent keeps its sockets: close them once the child no longer needs them
    being passed again (a child adopting them may switch them to non-blocking, which
    the parent's copies share).
    """

    prefix: tuple[str, ...]
    pass_fds: tuple[int, ...]

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` behind the shim."""
        return [*self.prefix, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` with the sockets; ``kwargs`` go to subprocess.Popen."""
        pass_fds = (*kwargs.pop("pass_fds", ()), *self.pass_fds)
        return subprocess.Popen(self.command(argv), pass_fds=pass_fds, **kwargs)


def listen_fds(
    sockets: socket.socket | Sequence[socket.socket], names: Sequence[str] = ()
) -> ListenFds:
    """Prepare passing ``sockets`` to a child the systemd way.

    Args:
        sockets: one or more bound sockets (see :func:`bound_socket`), in fd order.
        names: their ``LISTEN_FDNAMES`` (systemd's FileDescriptorName=), one per socket;
            portd matches them to listener names.

    Raises:
        ValueError: no sockets, a closed one, or a names count that does not match.
    """
    given = [sockets] if isinstance(sockets, socket.socket) else list(sockets)
    if not given or any(sock.fileno() < 0 for sock in given):
        raise ValueError("listen_fds needs at least one open socket")
    if names and len(names) != len(given):
        raise ValueError(f"listen_fds: {len(names)} names for {len(given)} sockets")
    if any(":" in name for name in names):
        raise ValueError("listen_fds: a name cannot contain ':'")
    fds = tuple(sock.fileno() for sock in given)
    prefix = (sys.executable, "-I", "-S", "-c", SHIM, ":".join(names), str(len(fds)))
    return ListenFds((*prefix, *map(str, fds)), fds)
