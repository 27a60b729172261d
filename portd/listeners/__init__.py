"""A listener at run time: its bound sockets, its handler, and its live connections.

* ``accept``: the accept loop (batches, back-off, which errnos mean what);
* ``host``: the narrow host every connection of the listener sees;
* ``stream`` / ``datagram``: one stream connection, one datagram socket;
* ``lending``: the transport of a connection whose socket a program may hold.

The Listener owns its sockets from the moment it is made (the assembly made its
handler and bound them), admits each peer through its gate before any transport or
handler code exists, and writes one ``connection_closed`` line per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

from portd.limits import ConnectionGate, DatagramGate, RefusalLog, Tally
from portd.listeners.accept import AcceptLoop
from portd.listeners.adopt import Adoptions
from portd.listeners.datagram import DatagramServer
from portd.listeners.host import ConnectionHost
from portd.listeners.idle import IdleTimeouts
from portd.listeners.lending import LendingTransport, bytes_seen_by_portd
from portd.listeners.stream import StreamConnection
from portd.logging import get_logger
from portd.metrics.histogram import Histogram

if TYPE_CHECKING:
    from portd.config import ListenerConfig
    from portd.endpoints.base import Address, Peer
    from portd.handlers.base import Handler


class Observer(Protocol):
    """Sees what a listener serves (the testing API records with one)."""

    def connection_closed(self, conn: StreamConnection) -> None:
        """A stream connection ended; its counters and ``how_it_ended`` are final."""

    def datagram_received(self, data: bytes, peer: Peer) -> None:
        """A datagram arrived (before the handler sees it)."""

    def handler_failed(self, exc: BaseException) -> None:
        """The handler raised (already logged as ``handler_failed``)."""


class Listener:
    """One configured listener, from bound sockets to drained connections."""

    def __init__(
        self,
        config: ListenerConfig,
        handler: Handler,
        sockets: list[socket.socket],
        next_conn_id: Callable[[], int],
        *,
        origin: str = "bound",
        owned: bool = True,
        log: Any = None,
        previous: Listener | None = None,
        tally: Tally | None = None,
    ) -> None:
        """Take ownership of ``handler`` and ``sockets`` (closed by :meth:`close`).

        Args:
            origin: where the sockets came from (bound, inherited, reused), for logs.
            owned: portd made the sockets' files (a unix socket's) and removes them once
                done; inherited ones belong to the service manager.
            previous: the listener this one replaces on a reload: its live connections
                keep counting against this one's caps.
            tally: without a predecessor, where live connections are counted (a
                worker's is shared with the daemon's other workers).
        """
        self.config = config
        self.sockets = sockets
        self.origin = origin  # bound, inherited (socket activation) or reused (reload)
        self.owned = owned
        self.addresses: list[Address] = list(config.endpoint.bound_addresses(sockets))
        self.handler = handler
        self._handler_closed = False
        # The daemon's structlog logger, or one the caller supplies (the testing API keeps
        # test servers off the host program's structlog configuration).
        self.log: Any = log if log is not None else get_logger(listener=config.name)
        # Decided once: below info the line's fields would be computed only to be dropped.
        self._log_closed = config.log_connections and _logs_at_info(self.log)
        self.host = ConnectionHost(
            config.name,
            handler=handler,
            limits=config.limits,
            log=self.log,
            next_conn_id=next_conn_id,
            opened=self.connection_opened,
            closed=self.connection_closed,
            failed=self.handler_failed,
        )
        # A handler that may give a program the socket gets a transport that has read
        # nothing when it decides, unless a listener feature must see the bytes.
        self.relay_reason = bytes_seen_by_portd(config)
        self.lends_sockets = handler.takes_sockets and self.relay_reason is None
        self.host.lends = self.lends_sockets
        self.host.tls = config.tls is not None
        self.connections: set[StreamConnection] = set()
        self.observers: list[Observer] = []
        self.total_connections = 0
        self.accept_limit = 0  # stop accepting after this many (0: never); `portd listen`
        self.drain_at_limit = True  # ...and tell the sessions (False: a program runs on)
        self.accepted = 0
        self.bytes_in = 0  # of closed connections; live ones are added by stats()
        self.bytes_out = 0
        self.endings: Counter[str] = Counter()
        self.durations: Histogram | None = None  # connection durations, when metrics are on
        self.started_at = time.monotonic()
        self.gate: ConnectionGate = ConnectionGate(
            config.limits, previous.gate if previous is not None else None, tally
        )
        self.refusal_log = RefusalLog(self.log)
        self.datagram_gate = DatagramGate(config.limits)
        self.datagram_log = RefusalLog(self.log, "datagram_dropped")
        self.tls = config.tls  # a TLS layer: each connection is adopted through a handshake
        self.handshake_failures: Counter[str] = Counter()
        self.handshake_log = RefusalLog(self.log, "tls_handshake_failed")
        self._handshakes: set[asyncio.Task[None]] = set()
        self._adopting = 0  # accepted, transport not made yet: live for draining
        self._aborted = False
        self._endpoints: list[DatagramServer] = []
        self._idle: asyncio.Event | None = None
        self._opened: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adoptions = Adoptions(self._adopted)
        self._accept = AcceptLoop(sockets, self._accepted, self.log, self._adoptions.batch_done)

    @property
    def name(self) -> str:
        """The listener's name."""
        return self.config.name

    @property
    def draining(self) -> bool:
        """True once the listener stopped accepting for good."""
        return self.host.draining

    @property
    def port(self) -> int:
        """The bound port of an IP listener (the same on every socket); 0 otherwise."""
        return int(getattr(self.addresses[0], "port", 0)) if self.addresses else 0

    async def start(self) -> None:
        """Serve every socket on the running loop and log ``listener_started``."""
        self._loop = loop = asyncio.get_running_loop()
        self.host.clock = loop
        if self.config.limits.idle_timeout_s:
            self.host.idle = IdleTimeouts(self.config.limits.idle_timeout_s, loop)
        if self.config.protocol == "tcp":
            # A handler that does not listen (refuse) leaves its sockets bound and unwatched:
            # the kernel refuses every connect.
            if self.handler.listens:
                if self.origin == "reused":  # the backlog may have changed; inherited keep theirs
                    for sock in self.sockets:
                        sock.listen(self.config.socket_options.backlog)
                self._adoptions.start(loop)
                self._accept.start(loop)
        else:
            for sock in self.sockets:
                endpoint = DatagramServer(
                    sock,
                    self.config.endpoint,
                    handler=self.handler,
                    gate=self.datagram_gate,
                    refusals=self.datagram_log,
                    observers=self.observers,
                    log=self.log,
                    failed=self.handler_failed,
                    released=self._check_idle,
                    listener=self.name,
                )
                endpoint.start(loop)
                self._endpoints.append(endpoint)
        fields: dict[str, Any] = {"port": self.port} if self.port else {}
        fields.update(self.handler.start_fields(self.relay_reason))
        if self.tls is not None:
            fields.update(tls=True, tls_min_version=self.tls.min_version)
            for warning in self.tls.warnings:  # expired: said, and served (the operator decides)
                self.log.warning("tls_certificate_not_valid", message=warning)
        self.log.info(
            "listener_started",
            bind=self.config.endpoint.describe_bound(self.addresses),
            protocol=self.config.protocol,
            handler=self.config.handler.name,
            **fields,
            addresses=[str(address) for address in self.addresses],
            origin=self.origin,
        )

    def _accepted(self, conn: socket.socket, addr: Any) -> bool:
        """One accepted socket: admit it or refuse it. False stops this batch."""
        try:
            peer = self.config.endpoint.peer(conn, addr)
        except OSError:  # the peer left before we could ask who it was
            conn.close()
            return True
        refusal = self.gate.admit(peer)
        if refusal is not None:
            self._refuse(conn, refusal, peer)
            return True
        assert self._loop is not None
        host = self.host  # the transport sets the socket non-blocking itself
        if self.lends_sockets:  # left blocking, as a program wants it (see lending)
            protocol = StreamConnection(host, peer)
            transport = LendingTransport(self._loop, conn, protocol, host.watcher())
            protocol.connection_made(transport)
        elif self.tls is not None:  # a handshake may take seconds: cancelled on abort
            self._adopting += 1
            conn.setblocking(False)  # its first bytes may be peeked at before OpenSSL's
            task = self._loop.create_task(self._adopt_tls(conn, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)
        else:
            self._adopting += 1
            self._adoptions.adopt(lambda: StreamConnection(host, peer), conn, peer)
        self.accepted += 1
        if self.accepted == self.accept_limit:
            # Later clients in the backlog are reset, as nc -l does.
            self.stop_accepting(drain=self.drain_at_limit)
            return False
        return True

    def _refuse(self, conn: socket.socket, reason: str, peer: Peer) -> None:
        """Close a refused peer at once; a full listener may first say so (HTTP 503)."""
        if reason == "max_connections" and self.tls is None:  # never plaintext to TLS
            busy = self.handler.busy_response()
            if busy:
                with contextlib.suppress(OSError):
                    conn.setblocking(False)  # never wait on a peer that was turned away
                    conn.send(busy)  # best effort: a small reply into an empty buffer
        conn.close()
        self.refusal_log.refused(reason, str(peer))

    def _adopted(self, error: BaseException | None, conn: socket.socket, peer: Peer) -> None:
        if error is not None:  # the peer left before the transport was made
            conn.close()
            self.gate.release(peer)
            self.log.debug("connection_lost_early", error=str(error))
        self._adopting -= 1
        self._check_idle()

    async def _adopt_tls(self, conn: socket.socket, peer: Peer) -> None:
        from portd.tls.accept import adopt_tls, logged

        assert self._loop is not None
        assert self.tls is not None
        host = self.host
        failed: str | None = "cancelled"  # aborted mid-handshake: released, not counted
        try:
            failed = await adopt_tls(
                self._loop, conn, lambda: StreamConnection(host, peer), self.tls
            )
        finally:
            self._adopting -= 1
            if failed is not None:
                self.gate.release(peer)
            self._check_idle()
        if failed is not None:
            self.handshake_failures[failed] += 1
            if logged(failed):
                self.handshake_log.refused(failed, str(peer))

    @property
    def live(self) -> int:
        """Connections accepted and not yet closed (a datagram socket lent to a program
        counts as one)."""
        lent = sum(1 for endpoint in self._endpoints if endpoint.lent is not None)
        return len(self.connections) + self._adopting + lent

    def _check_idle(self) -> None:
        if self._idle is not None and not self.live:
            self._idle.set()

    def connection_opened(self, conn: StreamConnection) -> None:
        """Called by a connection once it is accepted."""
        self.connections.add(conn)
        self.total_connections += 1
        if self._opened is not None:
            self._opened.set()
        if self._aborted:  # accepted before the stop, made after the final abort
            conn.abort()

    def handler_failed(self, exc: BaseException) -> None:
        """A session or the datagram handler raised: observers hear of it."""
        for observer in self.observers:
            observer.handler_failed(exc)

    def connection_closed(self, conn: StreamConnection, exc: Exception | None) -> None:
        """Called by a connection once it is closed: the one summary line per connection."""
        self.connections.discard(conn)
        self.gate.release(conn.peer)
        self.bytes_in += conn.bytes_in
        self.bytes_out += conn.bytes_out
        self.endings[conn.how_it_ended] += 1
        if self.durations is not None:
            self.durations.observe(time.monotonic() - conn.started)
        if self._log_closed:  # off for busy listeners; the counts stay
            client = conn.tls.peer_subject if self.tls is not None and conn.tls else None
            self.log.info(
                "connection_closed",
                conn_id=conn.conn_id,
                peer=str(conn.peer),
                bytes_in=conn.bytes_in,
                bytes_out=conn.bytes_out,
                duration_ms=round((time.monotonic() - conn.started) * 1000, 1),
                error=str(exc) if exc and conn.reason is None else conn.error,
                **conn.session.log_fields(),
                **({"tls_client": client} if client else {}),
                **(conn.fields or {}),
            )
        for observer in self.observers:
            observer.connection_closed(conn)
        if self._idle is not None:  # someone waits for the last connection
            self._check_idle()

    def stop_accepting(self, keep: Collection[socket.socket] = (), *, drain: bool = True) -> None:
        """Stop accepting connections and datagrams; tell live sessions the daemon drains.

        Args:
            keep: sockets a successor listener takes over (a reload): they are left open
                and no longer belong to this listener; the others are closed.
            drain: False when the listener only stops taking new clients (``portd listen``
                after its one connection, as nc -l): its sessions go on undisturbed.
        """
        self._accept.stop()
        for endpoint in self._endpoints:
            endpoint.stop()
        handed_over = [sock for sock in self.sockets if sock in keep]
        self.sockets = [sock for sock in self.sockets if sock not in keep]
        self.close_sockets(released=not handed_over)
        if drain and not self.host.draining:
            self.host.draining = True
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

    def abort_connections(self, reset: bool = True) -> int:
        """Close every live connection now (and any still being adopted); return how many.

        Args:
            reset: with an RST (the end of a drain: the peer must see its exchange was
                cut), or a plain close (a test server stopping).
        """
        self._aborted = True
        for task in list(self._handshakes):  # not connections yet: nothing to cut
            task.cancel()
        live = list(self.connections)
        for conn in live:
            if reset:
                conn.cut("aborted", "cut at the end of the drain")
            else:
                conn.abort()
        self.handler.abort_connections()
        lent = sum(endpoint.abort_lent() for endpoint in self._endpoints)
        return len(live) + self._adopting + lent

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
            "tls_handshake_failed": dict(self.handshake_failures),
            "closed": dict(self.endings),
            "handler_failures": self.endings["handler_failed"] + sum(e.failures for e in endpoints),
            "events": dict(self.host.events),
            "handler_events": dict(self.handler.counters()),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            **({"durations": self.durations.to_json()} if self.durations is not None else {}),
        }

    def close_sockets(self, *, released: bool = True) -> None:
        """Close the listener's own sockets (idempotent); with ``released``, remove what
        binding them left behind (a unix socket file) unless a successor holds them."""
        if not self.sockets:
            return
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        if released and self.owned:
            self.config.endpoint.release(())

    def close(self) -> None:
        """Release the sockets and whatever the handler holds (idempotent)."""
        if self.host.idle is not None:
            self.host.idle.close()
        self.refusal_log.flush()  # refusals counted since the last line are logged too
        self.datagram_log.flush()
        self.handshake_log.flush()
        self.close_sockets()
        self.close_handler()
        for endpoint in self._endpoints:
            endpoint.close()
        if self.host.readiness is not None:
            self.host.readiness.close()

    def close_handler(self) -> None:
        """Release what the handler holds (idempotent)."""
        if not self._handler_closed:
            self._handler_closed = True
            self.handler.close()


def _logs_at_info(log: Any) -> bool:
    """False when ``log`` (a structlog filtering logger) drops info lines."""
    enabled = getattr(log, "is_enabled_for", None)
    return True if enabled is None else bool(enabled(logging.INFO))
