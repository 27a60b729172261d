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

``--adopt`` (tcp, unix): accept as portd does instead (``add_reader``, accept() on the
listening socket, ``connect_accepted_socket`` stepped without a task, finished once per
accept batch; see portd/listeners/adopt.py). The same echo, so the difference to the
plain reference is the price of that design (a Python socket object and an adoption per
connection), and the difference to portd is portd's own work per connection.
"""

from __future__ import annotations

import _socket
import argparse
import asyncio
import json
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import uvloop

HOST = "127.0.0.1"
BACKLOG = 1024  # the same as portd's default, so neither drops SYNs the other would keep
BATCH = 64  # accepts per wake-up, as portd's ACCEPT_BATCH


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


class AcceptedSocket(socket.socket):
    """Reads its family and type as ints, as portd's accepted sockets do (uvloop reads both
    of every connection; socket.socket makes an enum of each)."""

    __slots__ = ()
    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]


class Adopter:
    """Accepts on ``sock`` itself and makes each connection's transport the way portd
    does: one accept batch per wake-up, each ``connect_accepted_socket`` coroutine stepped
    at once and finished by one scheduled call after the batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.shape = int(sock.family), int(sock.type), sock.proto
        self.waiting: list[tuple[Coroutine[Any, Any, Any], socket.socket]] = []
        self.scheduled = False  # a finish() is due
        loop.add_reader(sock.fileno(), self.ready)

    def ready(self) -> None:
        accept = self.sock._accept  # type: ignore[attr-defined]
        for _ in range(BATCH):
            try:
                fd, _addr = accept()
            except OSError:  # nothing more (EAGAIN), or an error: no back-off here
                break
            conn = AcceptedSocket(*self.shape, fd)
            self.step(self.loop.connect_accepted_socket(EchoProtocol, conn), conn)
        self.schedule()

    def schedule(self) -> None:
        """One finish() for whatever waits, as portd's Adoptions.batch_done."""
        if self.waiting and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.finish)

    def step(self, coro: Coroutine[Any, Any, Any], conn: socket.socket) -> None:
        """One step of an adoption; what is not done yet waits for finish()."""
        try:
            coro.send(None)
        except StopIteration:
            return
        except (OSError, RuntimeError):  # the peer left before its transport was made
            conn.close()
            return
        self.waiting.append((coro, conn))

    def finish(self) -> None:
        self.scheduled = False
        waiting, self.waiting = self.waiting, []
        for coro, conn in waiting:
            self.step(coro, conn)
        self.schedule()  # what is not made yet: another turn


def listening_socket(protocol: str, path: str | None) -> socket.socket:
    """A non-blocking listening socket on 127.0.0.1 port 0 (tcp) or at ``path`` (unix)."""
    if protocol == "unix":
        assert path is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        Path(path).unlink(missing_ok=True)
        sock.bind(path)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((HOST, 0))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def serve(protocol: str, path: str | None = None, adopt: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, after printing the bound port (or path)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if adopt:
        sock = listening_socket(protocol, path)
        Adopter(loop, sock)
        where = {"path": path} if path else {"port": sock.getsockname()[1]}
        print(json.dumps({"event": "listening", "protocol": protocol, **where}), flush=True)
        await stop.wait()
        return
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
    parser.add_argument("--adopt", action="store_true", help="accept and adopt as portd does")
    args = parser.parse_args()
    if (args.protocol == "unix") != (args.path is not None):
        parser.error("--path goes with unix, and only with it")
    if args.adopt and args.protocol == "udp":
        parser.error("--adopt is for stream sockets (tcp, unix)")
    uvloop.run(serve(args.protocol, args.path, args.adopt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
