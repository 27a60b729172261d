"""The reference peer: the smallest honest uvloop echo server, TCP, UDP or a unix socket.

It is what portd would be with nothing of its own on the data path: ``create_server``
plus a Protocol whose ``data_received`` writes the bytes back (and, like portd's echo,
stops reading while the peer is not reading, so its memory stays bounded; that costs
nothing until the write buffer passes its high-water mark). The datagram variant
sends each datagram back to its sender.

Run: ``python benchmarks/reference_echo.py {tcp,udp}``: it binds 127.0.0.1 port 0 and
prints one JSON line ``{"event": "listening", "port": N}`` on stdout once it serves;
``unix --path PATH``: a unix stream socket (``create_unix_server``, the same protocol),
announced as ``{"event": "listening", "path": PATH}``. It exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any, cast

import uvloop

HOST = "127.0.0.1"
BACKLOG = 1024  # the same as portd's default, so neither drops SYNs the other would keep


class EchoProtocol(asyncio.Protocol):
    """Writes back what it reads; pauses reading while its write buffer is full."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class DatagramEchoProtocol(asyncio.DatagramProtocol):
    """Sends every datagram back to where it came from."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def serve(protocol: str, path: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT, after printing the bound port (or path)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if protocol == "unix":
        await loop.create_unix_server(EchoProtocol, path, backlog=BACKLOG)
        print(json.dumps({"event": "listening", "protocol": protocol, "path": path}), flush=True)
        await stop.wait()
        return
    if protocol == "tcp":
        server = await loop.create_server(EchoProtocol, HOST, 0, backlog=BACKLOG)
        port = server.sockets[0].getsockname()[1]
    else:
        transport, _ = await loop.create_datagram_endpoint(
            DatagramEchoProtocol, local_addr=(HOST, 0)
        )
        port = transport.get_extra_info("sockname")[1]
    print(json.dumps({"event": "listening", "protocol": protocol, "port": port}), flush=True)
    await stop.wait()


def main() -> int:
    """Parse the one argument and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", choices=("tcp", "udp", "unix"))
    parser.add_argument("--path", help="unix: the socket's path")
    args = parser.parse_args()
    if (args.protocol == "unix") != (args.path is not None):
        parser.error("--path goes with unix, and only with it")
    uvloop.run(serve(args.protocol, args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
