"""The reference forwarder: the smallest honest uvloop TCP (or UDP) forwarder.

Two Protocols per connection, the client's and the upstream's, each writing what it
reads to the other's transport; flow control both ways (a side whose write buffer
passes its high-water mark pauses reading on the other side until it drains). It is
what portd's forward would be with nothing of its own on the data path (no byte
counting, no toxics, no limits, no connection bookkeeping or log line). It accepts
by hand (``add_reader`` + ``accept`` + ``connect_accepted_socket``), as portd does.
UDP: one connected upstream socket per client address, replies sent back to that client.

Once both sides have sent their FIN it closes both transports, as portd does. It used
to leave them half-closed: a transport whose ``write_eof`` was still pending could then
be freed with nothing referring to it, and uvloop 0.23 aborted ("double free or
corruption", in ``__uv_stream_on_shutdown`` called from libuv's ``uv__stream_destroy``,
gdb) within seconds of ``fwd-connections``; the abort was first blamed on
``create_server``.

Run: ``python benchmarks/reference_forward.py {tcp,udp} PORT UPSTREAM_PORT`` on
127.0.0.1 (PORT 0 lets the kernel choose). It prints one JSON line
``{"event": "listening", "port": N}`` once it serves and exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from typing import Any

import uvloop

HOST = "127.0.0.1"
BACKLOG = 1024


class Side(asyncio.Protocol):
    """One side of a forwarded connection; ``peer`` is the other side."""

    def __init__(self, peer: Side | None = None) -> None:
        self.peer = peer
        self.transport: Any = None
        self.pending: list[bytes] = []
        self.ended = False  # this side's peer sent its FIN

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)  # one chunk: the client sent before the upstream answered

    def _other(self) -> Any:
        """The other side's transport while it is open, else None."""
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return None
        return peer.transport

    def eof_received(self) -> bool:
        self.ended = True
        other = self._other()
        if other is None:
            return False
        other.write_eof()
        if self.peer is not None and self.peer.ended:  # both halves closed: close both
            self.transport.close()
            other.close()
        return True

    def pause_writing(self) -> None:
        other = self._other()
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self._other()
        if other is not None:
            other.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()


class Client(Side):
    """The accepted side: connects the upstream, then relays."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.connecting = asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream: Side
            _, upstream = await loop.create_connection(lambda: Side(self), HOST, self.upstream_port)
        except OSError:
            self.transport.abort()
            return
        if self.transport.is_closing():
            upstream.transport.close()
            return
        self.peer = upstream
        for data in self.pending:
            upstream.transport.write(data)
        self.pending.clear()


class UdpUpstream(asyncio.DatagramProtocol):
    """One client's upstream socket: replies go back to that client."""

    def __init__(self, listener: Any, client: Any) -> None:
        self.listener, self.client = listener, client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.listener.sendto(data, self.client)


class UdpListener(asyncio.DatagramProtocol):
    """The NAT table: one connected upstream transport per client address."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sessions: dict[Any, Any] = {}
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        upstream = self.sessions.get(addr)
        if upstream is not None:
            if upstream is not True:
                upstream.sendto(data)
            return
        self.sessions[addr] = True  # connecting: this datagram is dropped, as UDP may
        asyncio.get_running_loop().create_task(self.open(addr, data))

    async def open(self, addr: Any, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpUpstream(self.transport, addr), remote_addr=(HOST, self.upstream_port)
        )
        self.sessions[addr] = transport
        transport.sendto(data)


def accept(loop: Any, listener: socket.socket, upstream_port: int) -> None:
    """Accept what is waiting; each socket becomes a Client transport. (uvloop 0.23's
    create_server aborted with "double free or corruption" under this benchmark's
    connection churn; portd accepts this way too.)"""
    for _ in range(64):
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        loop.create_task(loop.connect_accepted_socket(lambda: Client(upstream_port), sock))


async def serve(kind: str, port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if kind == "tcp":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen(BACKLOG)
        listener.setblocking(False)
        loop.add_reader(listener.fileno(), accept, loop, listener, upstream_port)
        bound = listener.getsockname()[1]
    else:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpListener(upstream_port), local_addr=(HOST, port)
        )
        bound = transport.get_extra_info("sockname")[1]
    print(json.dumps({"event": "listening", "port": bound}), flush=True)
    await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("tcp", "udp"))
    parser.add_argument("port", type=int)
    parser.add_argument("upstream_port", type=int)
    args = parser.parse_args()
    uvloop.run(serve(args.kind, args.port, args.upstream_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
