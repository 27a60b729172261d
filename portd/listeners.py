"""A listener at run time: its bound sockets, its handler, and its live connections.

The Listener owns its sockets. The event loop serves duplicates of them, so stopping
the loop's server never closes the socket the listener may still need (a listener
that lives on across a reload keeps the very same socket).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from portd.binds import SocketAddress
from portd.config import ListenerConfig
from portd.connections import DatagramServer, StreamConnection
from portd.logging import get_logger
from portd.sockets import bound_addresses


class Listener:
    """One configured listener, from bound sockets to drained connections."""

    def __init__(
        self, config: ListenerConfig, sockets: list[socket.socket], next_conn_id: Callable[[], int]
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.addresses: list[SocketAddress] = bound_addresses(sockets)
        self.next_conn_id = next_conn_id
        self.handler = config.handler(config.settings)
        self.log: Any = get_logger(listener=config.name)
        self.connections: set[StreamConnection] = set()
        self.total_connections = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._endpoints: list[DatagramServer] = []
        self._idle: asyncio.Event | None = None

    @property
    def port(self) -> int:
        """The bound port (the same on every socket of the listener)."""
        return self.addresses[0].port

    async def start(self) -> None:
        """Serve every socket on the running loop and log ``listener_started``."""
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            served = socket.socket(fileno=os.dup(sock.fileno()))
            if self.config.protocol == "tcp":
                server = await loop.create_server(
                    lambda: StreamConnection(self), sock=served, backlog=self.config.backlog
                )
                self._servers.append(server)
            else:
                endpoint = DatagramServer(self)
                await loop.create_datagram_endpoint(lambda e=endpoint: e, sock=served)  # type: ignore[misc]
                self._endpoints.append(endpoint)
        self.log.info(
            "listener_started",
            bind=str(self.config.bind.with_port(self.port)),
            protocol=self.config.protocol,
            handler=self.config.handler.name,
            port=self.port,
            addresses=[str(address) for address in self.addresses],
        )

    def connection_opened(self, conn: StreamConnection) -> None:
        """Called by a connection once it is accepted."""
        self.connections.add(conn)
        self.total_connections += 1

    def connection_closed(self, conn: StreamConnection, exc: Exception | None) -> None:
        """Called by a connection once it is closed: the one summary line per connection."""
        self.connections.discard(conn)
        self.log.info(
            "connection_closed",
            conn_id=conn.conn_id,
            peer=conn.peer,
            bytes_in=conn.bytes_in,
            bytes_out=conn.bytes_out,
            duration_ms=round((time.monotonic() - conn.started) * 1000, 1),
            error=str(exc) if exc else None,
        )
        if self._idle is not None and not self.connections:
            self._idle.set()

    def stop_accepting(self) -> None:
        """Stop accepting connections and datagrams; live connections go on."""
        for server in self._servers:
            server.close()
        for endpoint in self._endpoints:
            if endpoint.transport is not None:
                endpoint.transport.close()
        self.close_sockets()

    async def wait_idle(self) -> None:
        """Return once every live connection has closed."""
        if not self.connections:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()

    def abort_connections(self) -> int:
        """Close every live connection now; return how many there were."""
        live = list(self.connections)
        for conn in live:
            conn.abort()
        return len(live)

    def close_sockets(self) -> None:
        """Close the listener's own sockets (idempotent)."""
        for sock in self.sockets:
            sock.close()
