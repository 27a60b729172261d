"""The coroutine adapter over real connections, on both loops: a sequential handler reads
and writes with flow control, ends by returning, fails by raising, and is cancelled
when its peer vanishes."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import ClassVar

import pytest

from portd.endpoints.base import ProtocolName
from portd.handlers.streams import RECEIVE_HIGH_WATER, Stream, StreamHandler
from portd.testing import HandlerFailedError, serve

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


class Upper(StreamHandler):
    """Line by line: each line back in upper case; "quit" ends the exchange."""

    name = "upper"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})

    async def serve(self, stream: Stream) -> None:
        pending = b""
        while data := await stream.receive():
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line == b"quit":
                    await stream.send(b"bye\n")
                    return
                await stream.send(line.upper() + b"\n")
        await stream.send(b"eof " + pending.upper())


class Greedy(StreamHandler):
    """Writes forever: a peer that does not read must make send() wait, not grow."""

    name = "greedy"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})
    sent: ClassVar[list[int]] = []
    waiting = threading.Event()  # send() had to wait: the peer's buffers are full
    cancelled = threading.Event()

    async def serve(self, stream: Stream) -> None:
        try:
            while True:
                sending = asyncio.ensure_future(stream.send(b"x" * 65536))
                await asyncio.sleep(0)
                if not sending.done():
                    Greedy.waiting.set()  # still waiting a loop turn later: paused
                await sending
                Greedy.sent.append(65536)
        finally:
            Greedy.cancelled.set()


class Crashing(StreamHandler):
    name = "crashing"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})

    async def serve(self, stream: Stream) -> None:
        await stream.receive()
        raise RuntimeError("sequential bug")


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@LOOPS
def test_lines_go_back_in_order_and_returning_closes_after_the_last(loop: str) -> None:
    with serve(Upper, loop=loop) as server:
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(b"one\ntwo\nquit\nnever read\n")
            assert read_all(client) == b"ONE\nTWO\nbye\n"
        (record,) = server.wait_connections(1)
    assert record.how_it_ended == "closed"


@LOOPS
def test_the_peers_eof_is_an_empty_receive_and_the_answer_still_arrives(loop: str) -> None:
    with serve(Upper, loop=loop) as server, socket.create_connection(server.address) as client:
        client.settimeout(10)
        client.sendall(b"half")
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == b"eof HALF"


@LOOPS
def test_a_peer_that_never_reads_makes_send_wait_and_its_reset_cancels_serve(loop: str) -> None:
    Greedy.sent.clear()
    Greedy.waiting.clear()
    Greedy.cancelled.clear()
    with serve(Greedy, loop=loop) as server:
        client = socket.create_connection(server.address, timeout=10)
        assert Greedy.waiting.wait(10)  # the peer reads nothing: send() waits...
        written = len(Greedy.sent) * 65536
        assert written < 32 << 20  # ...after the kernel's buffers filled, not memory
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # an RST: the task must be cancelled, its finally run
        assert Greedy.cancelled.wait(10)
        (record,) = server.wait_connections(1)
    assert record.how_it_ended == "reset"


def test_receive_stops_reading_past_its_high_water() -> None:
    """A handler that does not call receive() does not make the server buffer more."""

    class Sleepy(StreamHandler):
        name = "sleepy"
        protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})

        async def serve(self, stream: Stream) -> None:
            await stream.wait_draining()

    with serve(Sleepy) as server, socket.create_connection(server.address) as client:
        client.setblocking(False)
        sent = 0
        for _ in range(10_000):
            try:
                sent += client.send(b"y" * 65536)
            except BlockingIOError:
                break
        assert sent < RECEIVE_HIGH_WATER + (32 << 20)  # the adapter's bound + kernel buffers


def test_a_serve_that_raises_is_handler_failed_and_fails_the_test() -> None:
    context = serve(Crashing)
    server = context.__enter__()
    with socket.create_connection(server.address, timeout=10) as client:
        client.sendall(b"go")
        assert read_all(client) == b""
    (record,) = server.wait_connections(1)
    assert record.how_it_ended == "handler_failed"
    with pytest.raises(HandlerFailedError, match="RuntimeError: sequential bug"):
        context.__exit__(None, None, None)
