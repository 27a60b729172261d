"""Lending a connection's socket to a program, on both loops: portd reads nothing while
the program has it (the bytes reach the program exactly), the connection stays the
server's (a hold keeps it counted, the connection_closed record waits for the release
and carries the handler's fields, the byte counts come from the kernel), the peer's
reset still ends it, and a listener feature that must see the bytes turns lending off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any, ClassVar

import pytest

from portd.endpoints.base import ProtocolName
from portd.handlers.base import Connection, FdWatch, Handler, StreamSession
from portd.testing import serve

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
ONE_MIB = os.urandom(1 << 20)


class Lent(StreamSession):
    """Runs ``cat`` (or ``program``) on the lent socket; reads nothing itself until then."""

    def __init__(self, conn: Connection, program: list[str]) -> None:
        self.conn = conn
        self.read_by_portd = 0
        self.watching: FdWatch | None = None
        self.release = conn.hold()
        sock = conn.lend_socket()
        LendHandler.lent.append(sock is not None)
        if sock is None:
            conn.close()
            self.release()
            return
        with sock:
            self.child = subprocess.Popen(program, stdin=sock.fileno(), stdout=sock.fileno())
        self.pidfd = os.pidfd_open(self.child.pid)
        self.watching = conn.watch(self.pidfd, self.exited)

    def exited(self) -> None:
        assert self.watching is not None
        self.watching.cancel()
        self.watching = None
        os.close(self.pidfd)
        code = self.child.wait()
        self.conn.annotate(exit_code=code, read_before_exit=self.read_by_portd)
        self.conn.reclaim_socket()
        self.conn.resume_reading()
        self.conn.write_eof()
        self.release()

    def data_received(self, data: bytes) -> None:
        self.read_by_portd += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        LendHandler.lost.append(exc)
        if self.watching is not None:  # the peer went away under the program: end it
            self.child.kill()


class LendHandler(Handler):
    name = "lend-test"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})
    takes_sockets = True
    program: ClassVar[list[str]] = ["cat"]
    lent: ClassVar[list[bool]] = []
    lost: ClassVar[list[Exception | None]] = []
    started: ClassVar[list[str | None]] = []

    def open_session(self, conn: Connection) -> StreamSession:
        return Lent(conn, self.program)

    def start_fields(self, relay_reason: str | None) -> dict[str, Any]:
        LendHandler.started.append(relay_reason)
        return {}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    LendHandler.program = ["cat"]
    LendHandler.lent.clear()
    LendHandler.lost.clear()
    LendHandler.started.clear()


def _send_then_read(address: Any, payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as client:

        def send() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        while chunk := client.recv(1 << 16):
            received += chunk
        sender.join()
    return bytes(received)


@LOOPS
def test_the_program_gets_every_byte_and_portd_reads_none_of_them(loop: str) -> None:
    with serve(LendHandler, loop=loop) as server:
        echoed = _send_then_read(server.address, ONE_MIB)
        (record,) = server.wait_connections(1)
    assert echoed == ONE_MIB
    assert LendHandler.lent == [True]
    assert record.fields == {"exit_code": 0, "read_before_exit": 0}
    assert (record.bytes_in, record.bytes_out, record.how_it_ended) == (
        len(ONE_MIB), len(ONE_MIB), "closed",
    )  # fmt: skip


@LOOPS
def test_a_hold_keeps_the_connection_open_until_the_program_is_gone(loop: str) -> None:
    """The record (the connection_closed line) waits for the release, though the peer
    left long before: the program read its stdin to the end and exits only then."""
    LendHandler.program = [sys.executable, "-c", "import sys, time; sys.stdin.read(); "
                           "time.sleep(0.3); print('late', flush=True)"]  # fmt: skip
    with serve(LendHandler, loop=loop) as server:
        with socket.create_connection(server.address, timeout=10) as client:
            client.shutdown(socket.SHUT_WR)
            assert client.makefile("rb").read() == b"late\n"
        (record,) = server.wait_connections(1)
    assert record.fields["exit_code"] == 0
    assert record.duration_s >= 0.3


@LOOPS
def test_the_peers_reset_ends_a_lent_connection(loop: str) -> None:
    """The program never reads; the transport still sees the RST (EPOLLERR) and ends the
    connection, so the session can stop the program."""
    LendHandler.program = ["sleep", "30"]
    with serve(LendHandler, loop=loop) as server:
        client = socket.create_connection(server.address, timeout=10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.close()  # an RST
        (record,) = server.wait_connections(1)
    assert [type(exc) for exc in LendHandler.lost] == [ConnectionResetError]
    assert record.how_it_ended == "reset"
    assert record.fields["exit_code"] == -9


@LOOPS
def test_a_limit_that_watches_the_bytes_turns_lending_off(loop: str) -> None:
    with serve(LendHandler, loop=loop, idle_timeout_s=30) as server:
        with socket.create_connection(server.address, timeout=10) as client:
            assert client.recv(10) == b""
        server.wait_connections(1)
    assert LendHandler.lent == [False]
    assert LendHandler.started == ["idle_timeout_s"]


def test_handlers_that_do_not_take_sockets_get_none() -> None:
    lent: list[object] = []

    class Plain(Handler):
        name = "plain"
        protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})

        def open_session(self, conn: Connection) -> StreamSession:
            lent.append(conn.lend_socket())
            conn.close()
            return StreamSession()

    with serve(Plain) as server:
        with socket.create_connection(server.address, timeout=10) as client:
            assert client.recv(10) == b""
        server.wait_connections(1)
    assert lent == [None]
