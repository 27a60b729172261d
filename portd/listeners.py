"""A listener at run time: its bound sockets, its handler, and its live connections.

The Listener owns its sockets and accepts on them itself rather than through
``loop.create_server``: uvloop closes a server for good when accept() fails with
ENOBUFS or ENOMEM (and sheds every pending client on EMFILE), while portd must back
off and recover. Accepting here also keeps the socket usable after the listener stops
serving it (a listener that lives on across a reload keeps the very same socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any, Protocol

from portd.binds import SocketAddress, format_peer
from portd.config import ListenerConfig
from portd.connections import DatagramServer, StreamConnection
from portd.handlers.base import Peer
from portd.limits import ConnectionGate, DatagramGate, RefusalLog
from portd.logging import get_logger
from portd.sockets import bound_addresses

ACCEPT_BATCH = 64
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_START_S = 0.05
ACCEPT_BACKOFF_MAX_S = 1.0


class Observer(Protocol):
    """Sees what a listener serves (the testing API records with one)."""

    def connection_closed(self, conn: StreamConnection) -> None:
        """A TCP connection ended; its counters and ``how_it_ended`` are final."""

    def datagram_received(self, data: bytes, peer: Peer) -> None:
        """A UDP datagram arrived (before the handler sees it)."""


class Listener:
    """One configured listener, from bound sockets to drained connections."""

    def __init__(
        self,
        config: ListenerConfig,
        sockets: list[socket.socket],
        next_conn_id: Callable[[], int],
        origin: str = "bound",
        log: Any = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.origin = origin  # bound, inherited (socket activation) or reused (reload)
        self.addresses: list[SocketAddress] = bound_addresses(sockets)
        self.next_conn_id = next_conn_id
        self.handler = config.handler(config.settings)
        self._handler_closed = False
        # The daemon's structlog logger, or one the caller supplies (the testing API keeps
        # test servers off the host program's structlog configuration).
        self.log: Any = log if log is not None else get_logger(listener=config.name)
        self.connections: set[StreamConnection] = set()
        self.observers: list[Observer] = []
        self.total_connections = 0
        self.accept_limit = 0  # stop accepting after this many (0: never); `portd listen`
        self.accepted = 0
        self.bytes_in = 0  # of closed connections; live ones are added by stats()
        self.bytes_out = 0
        self.endings: Counter[str] = Counter()
        self.started_at = time.monotonic()
        self.gate = ConnectionGate(config.limits)
        self.refusal_log = RefusalLog(self.log)
        self.datagram_gate = DatagramGate(config.limits)
        self.datagram_log = RefusalLog(self.log, "datagram_dropped")
        self._adopting = 0  # accepted, transport not made yet: live for draining
        self.draining = False
        self._aborted = False
        self._endpoints: list[DatagramServer] = []
        self._idle: asyncio.Event | None = None
        self._opened: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._backoff_s = 0.0
        self._resume: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        """The bound port (the same on every socket of the listener)."""
        return self.addresses[0].port

    async def start(self) -> None:
        """Serve every socket on the running loop and log ``listener_started``."""
        self._loop = loop = asyncio.get_running_loop()
        if self.config.protocol == "tcp":
            # A handler that does not listen (refuse) leaves its sockets bound and unwatched:
            # the kernel refuses every connect.
            if self.handler.listens:
                if self.origin == "reused":  # the backlog may have changed; inherited keep theirs
                    for sock in self.sockets:
                        sock.listen(self.config.backlog)
                self._watch_accept(True)
        else:
            for sock in self.sockets:
                endpoint = DatagramServer(self, sock)
                endpoint.start(loop)
                self._endpoints.append(endpoint)
        self.log.info(
            "listener_started",
            bind=str(self.config.bind.with_port(self.port)),
            protocol=self.config.protocol,
            handler=self.config.handler.name,
            port=self.port,
            addresses=[str(address) for address in self.addresses],
            origin=self.origin,
        )

    def _watch_accept(self, on: bool) -> None:
        assert self._loop is not None
        self._accepting = on
        for sock in self.sockets:
            if on:
                self._loop.add_reader(sock.fileno(), self._accept_ready, sock)
            else:
                self._loop.remove_reader(sock.fileno())

    def _accept_ready(self, sock: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._back_off(exc)
                return
            self._backoff_s = 0.0
            refusal = self.gate.admit(peer[0])
            if refusal is not None:
                self._refuse(conn, refusal, peer)
                continue
            conn.setblocking(False)
            self._adopting += 1
            self._loop.create_task(self._adopt(conn, peer))
            self.accepted += 1
            if self.accepted == self.accept_limit:
                self.stop_accepting()  # later clients in the backlog are reset, as nc -l does
                return

    def _refuse(self, conn: socket.socket, reason: str, peer: Peer) -> None:
        """Close a refused peer at once; a full listener may first say so (HTTP 503)."""
        if reason == "max_connections":
            busy = self.handler.busy_response()
            if busy:
                with contextlib.suppress(OSError):
                    conn.send(busy)  # best effort: a small reply into an empty buffer
        conn.close()
        self.refusal_log.refused(reason, format_peer(peer))

    async def _adopt(self, conn: socket.socket, peer: Peer) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: StreamConnection(self, peer), conn)
        except OSError as exc:  # the peer left before the transport was made
            conn.close()
            self.gate.release(peer[0])
            self.log.debug("connection_lost_early", error=str(exc))
        finally:
            self._adopting -= 1
            self._check_idle()

    @property
    def live(self) -> int:
        """Connections accepted and not yet closed."""
        return len(self.connections) + self._adopting

    def _check_idle(self) -> None:
        if self._idle is not None and not self.live:
            self._idle.set()

    def _back_off(self, exc: OSError) -> None:
        """Out of descriptors or memory: stop accepting for a while, never spin.

        Pending clients wait in the kernel's backlog and are served once resources
        return; the pause doubles up to ACCEPT_BACKOFF_MAX_S while the errors last.
        """
        assert self._loop is not None
        self._backoff_s = min(
            max(self._backoff_s * 2, ACCEPT_BACKOFF_START_S), ACCEPT_BACKOFF_MAX_S
        )
        capacity = exc.errno in ACCEPT_CAPACITY_ERRNOS
        self.log.warning(
            "accept_failed", error=exc.strerror, capacity=capacity, retry_in_s=self._backoff_s
        )
        self._watch_accept(False)
        self._resume = self._loop.call_later(self._backoff_s, self._watch_accept, True)

    def connection_opened(self, conn: StreamConnection) -> None:
        """Called by a connection once it is accepted."""
        self.connections.add(conn)
        self.total_connections += 1
        if self._opened is not None:
            self._opened.set()
        if self._aborted:  # accepted before the stop, made after the final abort
            conn.abort()

    def connection_closed(self, conn: StreamConnection, exc: Exception | None) -> None:
        """Called by a connection once it is closed: the one summary line per connection."""
        self.connections.discard(conn)
        self.gate.release(conn.peer_host)
        self.bytes_in += conn.bytes_in
        self.bytes_out += conn.bytes_out
        self.endings[conn.how_it_ended] += 1
        if self.config.log_connections:  # off for busy listeners; the counts stay
            self.log.info(
                "connection_closed",
                conn_id=conn.conn_id,
                peer=conn.peer,
                bytes_in=conn.bytes_in,
                bytes_out=conn.bytes_out,
                duration_ms=round((time.monotonic() - conn.started) * 1000, 1),
                error=str(exc) if exc else None,
            )
        for observer in self.observers:
            observer.connection_closed(conn)
        self._check_idle()

    def stop_accepting(self, keep: Collection[socket.socket] = ()) -> None:
        """Stop accepting connections and datagrams; tell live sessions the daemon drains.

        Args:
            keep: sockets a successor listener takes over (a reload): they are left open
                and no longer belong to this listener; the others are closed.
        """
        if self._resume is not None:
            self._resume.cancel()
        if self._accepting:
            self._watch_accept(False)
        for endpoint in self._endpoints:
            endpoint.stop()
        self.sockets = [sock for sock in self.sockets if sock not in keep]
        self.close_sockets()
        if not self.draining:
            self.draining = True
            for conn in list(self.connections):
                conn.shutdown_requested()

    async def wait_for_connection(self) -> None:
        """Return once at least one connection has been accepted."""
        if not self.total_connections:
            self._opened = asyncio.Event()
            await self._opened.wait()

    async def wait_idle(self) -> None:
        """Return once every live connection has closed."""
        if not self.live:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()

    def abort_connections(self) -> int:
        """Close every live connection now (and any still being adopted); return how many."""
        self._aborted = True
        live = list(self.connections)
        for conn in live:
            conn.abort()
        return len(live) + self._adopting

    def stats(self) -> dict[str, Any]:
        """This listener's numbers for ``portd status``."""
        live = list(self.connections)
        endpoints = self._endpoints
        refusals = self.gate.refusals + self.datagram_gate.refusals
        return {
            "name": self.config.name,
            "protocol": self.config.protocol,
            "handler": self.config.handler.name,
            "addresses": [str(address) for address in self.addresses],
            "origin": self.origin,
            "active": len(live),
            "total": self.total_connections,
            "bytes_in": self.bytes_in
            + sum(c.bytes_in for c in live)
            + sum(e.bytes_in for e in endpoints),
            "bytes_out": self.bytes_out
            + sum(c.bytes_out for c in live)
            + sum(e.bytes_out for e in endpoints),
            "datagrams_in": sum(e.datagrams_in for e in endpoints),
            "datagrams_dropped": sum(e.dropped for e in endpoints),
            "refusals": dict(refusals),
            "closed": dict(self.endings),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
        }

    def close_sockets(self) -> None:
        """Close the listener's own sockets (idempotent)."""
        for sock in self.sockets:
            sock.close()

    def close(self) -> None:
        """Release the sockets and whatever the handler holds (idempotent)."""
        self.close_sockets()
        self.close_handler()

    def close_handler(self) -> None:
        """Release what the handler holds (idempotent)."""
        if not self._handler_closed:
            self._handler_closed = True
            self.handler.close()
