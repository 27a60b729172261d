"""broker and chat: five clients, one of them never reading; the four others get every
byte (every line, named) in order and go on while the fifth is disconnected with a log
line, for a full queue at once or after send_timeout_s; on both loops, and as
``portd listen --broker`` / ``--chat``."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import pytest

from portd.handlers.broker import BrokerHandler, ChatHandler
from portd.testing import FakeConnection, serve
from tests.processes import read_to_eof, tcp_client

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
WAIT_S = 10.0


class Reader(threading.Thread):
    """Reads a client until EOF (or a reset), keeping everything."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.received = bytearray()
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 16):
                self.received += chunk
        except OSError as exc:
            self.error = exc

    def until(self, size: int) -> bytes:
        deadline = time.monotonic() + WAIT_S
        while len(self.received) < size and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.005)  # a reader thread fills it; nothing to wait on but its progress
        return bytes(self.received)


def connect_quiet(address: object) -> socket.socket:
    """A client that never reads, with a small receive buffer so it fills soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT_S)
    sock.connect(address)  # type: ignore[arg-type]
    return sock


def joined(server: object, count: int) -> None:
    """Wait until the handler has ``count`` clients (accept runs on the server's loop)."""
    handler = server.running.listener.handler  # type: ignore[attr-defined]
    deadline = time.monotonic() + WAIT_S
    while len(handler.clients) < count:
        assert time.monotonic() < deadline, f"{len(handler.clients)} of {count} clients joined"
        time.sleep(0.005)


@LOOPS
@pytest.mark.parametrize("limit", ["buffer_full", "send_timeout"])
def test_broker_five_clients_one_never_reading(
    loop: str, limit: str, caplog: pytest.LogCaptureFixture
) -> None:
    options: dict[str, Any] = (
        {"max_buffer_bytes": "256KiB", "send_timeout_s": 30}
        if limit == "buffer_full"
        else {"max_buffer_bytes": "64MiB", "send_timeout_s": 0.5}
    )
    payload = os.urandom(4 << 20)
    with (
        caplog.at_level(logging.WARNING, "portd.testing"),
        serve("broker", loop=loop, **options) as server,
    ):
        sender = tcp_client(server.port)
        quiet = connect_quiet(server.address)
        readers = [Reader(tcp_client(server.port)) for _ in range(3)]
        joined(server, 5)
        sender_reader = Reader(sender)
        started = time.monotonic()
        sender.sendall(payload)
        got = [reader.until(len(payload)) for reader in readers]
        elapsed = time.monotonic() - started
        records = server.wait_connections(1)
        with pytest.raises(ConnectionResetError):
            read_to_eof(quiet)  # it was cut: everything it never read is gone
        for client in (sender, quiet, *(reader.sock for reader in readers)):
            client.close()
    assert all(data == payload for data in got)  # the others got every byte, in order
    assert bytes(sender_reader.received) == b""  # nobody hears back what it sent
    (dropped,) = records
    assert dropped.how_it_ended == ("aborted" if limit == "buffer_full" else "send_timeout")
    warnings = [r.getMessage() for r in caplog.records if "slow_consumer" in r.getMessage()]
    assert len(warnings) == 1
    assert f"reason='{limit}'" in warnings[0]
    assert elapsed < WAIT_S


@LOOPS
def test_chat_names_lines_and_announces_joins_and_leaves(loop: str) -> None:
    with serve("chat", loop=loop) as server:
        first = tcp_client(server.port)
        assert first.recv(200) == b"<announce> you are <user1>; here already: nobody\n"
        second = tcp_client(server.port)
        assert second.recv(200) == b"<announce> you are <user2>; here already: <user1>\n"
        port = second.getsockname()[1]
        assert first.recv(200) == f"<announce> <user2> joined from 127.0.0.1:{port}\n".encode()
        first.sendall(b"hello\r\nhow are")
        assert second.recv(200) == b"<user1> hello\n"
        first.sendall(b" you?\n")
        assert second.recv(200) == b"<user1> how are you?\n"
        second.sendall(b"bye, without a newline")
        second.close()
        assert read_until(first, b"left\n") == (
            b"<user2> bye, without a newline\n<announce> <user2> left\n"
        )
        first.close()


def read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@LOOPS
def test_chat_five_clients_one_never_reading(loop: str) -> None:
    lines = [b"line %05d %s\n" % (n, b"x" * 200) for n in range(60_000)]
    with serve("chat", loop=loop, send_timeout_s=0.5, max_buffer_bytes="64MiB") as server:
        talker = tcp_client(server.port)
        quiet = connect_quiet(server.address)
        readers = [Reader(tcp_client(server.port)) for _ in range(3)]
        joined(server, 5)
        talker_reader = Reader(talker)
        talker.sendall(b"".join(lines))
        expected = b"".join(b"<user1> " + line for line in lines)
        got = [reader.until(len(expected) + 400) for reader in readers]
        (record,) = server.wait_connections(1)
        for client in (talker, quiet, *(reader.sock for reader in readers)):
            client.close()
    for data in got:
        said = [line + b"\n" for line in data.split(b"\n") if line]
        talk = [line for line in said if not line.startswith(b"<announce>")]
        assert b"".join(talk) == expected  # every line, named, in order
        assert b"<announce> <user2> left (disconnected: not reading)\n" in said
    assert b"<user1> line" not in bytes(talker_reader.received)
    assert record.how_it_ended == "send_timeout"


def test_a_long_line_is_passed_on_in_pieces() -> None:
    handler = ChatHandler({"max_buffer_bytes": 1 << 20, "max_line_bytes": 4})
    one, two = FakeConnection(conn_id=1), FakeConnection(conn_id=2)
    talker = handler.open_session(one)
    handler.open_session(two)
    two.written.clear()
    talker.data_received(b"abcdefghij")
    assert bytes(two.written) == b"<user1> abcd\n<user1> efgh\n"


def test_a_full_queue_drops_that_client_only() -> None:
    handler = BrokerHandler({"max_buffer_bytes": 10})
    sender, slow, fine = (FakeConnection(conn_id=n, high_water=10**9) for n in (1, 2, 3))
    sessions = [handler.open_session(conn) for conn in (sender, slow, fine)]
    slow.queued = 8  # it has not read 8 bytes
    sessions[0].data_received(b"12345")
    assert (slow.ending, slow.reason) == ("reset", "slow consumer: more than 10 bytes queued")
    assert (bytes(fine.written), fine.ending) == (b"12345", None)
