"""Finding what a test left behind when its server stops.

Four kinds of leak, each named precisely enough to find in the test:

* connections: clients that neither closed nor half-closed their connection by the
  time the server stopped (given ``leak_grace_s`` to notice a close in flight);
* tasks: asyncio tasks the server's code started that are still pending;
* threads: threads the server started (its loop thread, its executor) still alive;
* sockets: file descriptors of this process still bound to the server's address
  (the server's own) or connected to it (a client the test never closed, or kept
  after the server closed its side).

A connection whose peer is gone but which the server has not read to the end (a
blackhole never reads; a stall has seen EOF and keeps the socket) is recognised by
polling its socket for a hang-up, so only live clients count as leaks. A TCP client
that hung up after filling a blackhole's receive window shows no hang-up at all: its
FIN waits behind the bytes the window does not take. The kernel still knows: the
client's end of the connection (on loopback, in the same socket tables) has left
ESTABLISHED (FIN-WAIT-1, with inode 0 once no process holds it), so that end is asked.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portd.endpoints.parse import address_of

if TYPE_CHECKING:
    from portd.listeners import Listener
    from portd.listeners.stream import StreamConnection

POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
HANG_UP_EVENTS = POLLRDHUP | select.POLLHUP | select.POLLERR
# States of a TCP socket whose program has closed it or shut down its sending side.
HUNG_UP_STATES = frozenset({"FIN-WAIT-1", "FIN-WAIT-2", "CLOSING", "TIME-WAIT", "LAST-ACK"})
TESTING_DIR = str(Path(__file__).resolve().parent)
PORTD_DIR = str(Path(TESTING_DIR).parent)


@dataclass(frozen=True, slots=True)
class LeakReport:
    """What one test server found at its stop; empty (falsy) when nothing leaked."""

    server: str
    connections: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    threads: tuple[str, ...] = ()
    sockets: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.connections or self.tasks or self.threads or self.sockets)

    def format(self) -> str:
        """A multi-line report: one heading per kind, one line per leak."""
        parts = [f"{self.server} leaked:"]
        sections = (
            ("connections still open (the client never closed them)", self.connections),
            ("tasks still pending", self.tasks),
            ("threads still running", self.threads),
            ("sockets still open", self.sockets),
        )
        for heading, lines in sections:
            if lines:
                parts.append(f"  {len(lines)} {heading}:")
                parts.extend(f"    {line}" for line in lines)
        return "\n".join(parts)


class LeakError(AssertionError):
    """A test server found leaks at its stop (the message lists them)."""

    def __init__(self, reports: Sequence[LeakReport]) -> None:
        super().__init__("\n".join(report.format() for report in reports))
        self.reports = tuple(reports)


def release_finished(listener: Listener) -> list[StreamConnection]:
    """Close connections whose client hung up though the server has not seen it.

    Their records say ``closed`` (or ``reset``), as the client ended them.

    Returns:
        The connections whose clients still hold them.
    """
    held = []
    for conn in list(listener.connections):
        ending = peer_ending(conn) if not conn.transport.is_closing() else "closing"
        if ending is None:
            held.append(conn)
        elif ending != "closing":
            if conn.ending is None:
                conn.ending = ending
            conn.abort()
    return held


def peer_ending(conn: StreamConnection) -> str | None:
    """``closed`` or ``reset`` when the client has hung up; None while it holds on."""
    sock = conn.transport.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return None
    poller = select.poll()
    poller.register(sock.fileno(), HANG_UP_EVENTS)
    events = sum(mask for _fd, mask in poller.poll(0))
    if events & select.POLLERR:
        return "reset"
    if events & (POLLRDHUP | select.POLLHUP):
        return "closed"
    return "closed" if client_end_hung_up(sock) else None


def client_end_hung_up(sock: Any) -> bool:
    """True when the TCP socket at the other end of ``sock`` (the server's side) has
    been closed or shut down by its program, though no FIN has reached ``sock`` yet.

    Only a client on this host is visible (its end is in the same socket tables); for
    any other, or when the tables cannot be read, the answer is False (held).
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False  # a unix peer's close reaches the server at once (POLLRDHUP)
    from portd.errors import DiagnosisError
    from portd.inspect.sockdiag import tcp_socket

    try:
        local, remote = sock.getsockname()[:2], sock.getpeername()[:2]
        client = tcp_socket(sock.family, remote, local)
    except (OSError, DiagnosisError):
        return False
    return client is not None and (client.inode == 0 or client.state in HUNG_UP_STATES)


def describe_connection(conn: StreamConnection) -> str:
    """One line naming a live connection."""
    return f"#{conn.conn_id} from {conn.peer}: {conn.bytes_in} bytes in, {conn.bytes_out} out"


def pending_tasks(tasks: Iterable[asyncio.Task[object]], portd_only: bool) -> list[str]:
    """Cancel the pending tasks (only those running portd's code if ``portd_only``);
    one line each, naming where they wait."""
    found = []
    for task in tasks:
        if task.done() or (portd_only and not _runs_portd_code(task)):
            continue
        task.cancel()
        found.append(describe_task(task))
    return found


def _runs_portd_code(task: asyncio.Task[object]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    filename = code.co_filename if code is not None else ""
    return filename.startswith(PORTD_DIR) and not filename.startswith(TESTING_DIR)


def describe_task(task: asyncio.Task[object]) -> str:
    """The task's name, coroutine and where it waits."""
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", repr(coro))
    stack = task.get_stack(limit=1)
    where = f" at {stack[0].f_code.co_filename}:{stack[0].f_lineno}" if stack else ""
    return f"{task.get_name()}: {name}{where}"


def threads_named(prefix: str) -> list[str]:
    """Live threads whose name starts with ``prefix``."""
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def sockets_on(addresses: Sequence[Any], kind: socket.SocketKind) -> list[str]:
    """File descriptors of this process bound to one of ``addresses`` or connected to it.

    Read from /proc/self/fd, each socket inspected through a duplicate, so nothing is
    disturbed and nothing slow (a scan of the whole host's socket tables) is needed.
    """
    found = []
    for name in _fd_names():
        described = _describe_fd(int(name), addresses, kind)
        if described:
            found.append(described)
    return found


def _fd_names() -> list[str]:
    try:
        return [path.name for path in Path("/proc/self/fd").iterdir()]
    except OSError:  # no /proc: nothing can be checked
        return []


def _describe_fd(fd: int, addresses: Sequence[Any], kind: socket.SocketKind) -> str:
    ends = _socket_ends(fd, kind)
    if ends is None:
        return ""
    local, remote = ends
    if any(_same(local, ours) for ours in addresses):
        to = f" connected to {remote}" if remote else ""
        return f"fd {fd}: the server's socket on {local}{to}"
    if remote is not None and any(_same(remote, ours) for ours in addresses):
        return f"fd {fd}: a client socket {local} connected to the server at {remote}"
    return ""


def _socket_ends(fd: int, kind: socket.SocketKind) -> tuple[Any, Any] | None:
    """``(local, remote)`` addresses of a socket fd of ``kind``; None for anything else."""
    try:
        if not str(Path(f"/proc/self/fd/{fd}").readlink()).startswith("socket:"):
            return None
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:  # closed meanwhile, or not a socket we can read
        return None
    with sock:
        if sock.type != kind:
            return None
        local = _address(sock.family, sock.getsockname())
        try:
            remote = _address(sock.family, sock.getpeername())
        except OSError:
            remote = None
    return None if local is None else (local, remote)


def _address(family: int, name: Any) -> Any:
    found = address_of(family, name)
    return found[1] if found is not None else None


def _same(address: Any, ours: Any) -> bool:
    """The address is the server's, or one of a wildcard server's: they overlap."""
    return address == ours or bool(ours.overlaps(address))
