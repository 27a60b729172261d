"""`portd connect HOST PORT` as a real process: files byte-exact to and from the real
nc and socat listening, the EOF rules, UDP, and its one-line failures.

nc and socat listen on port 0 and announce the port the kernel chose (``nc -lvn``:
"Listening on 127.0.0.1 PORT"; ``socat -d -d``: "listening on AF=2 127.0.0.1:PORT"),
so no test picks a port number: there is no race with other programs on the host.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import (
    NC_LISTENING,
    SOCAT_LISTENING,
    WAIT_S,
    Spawner,
    read_to_eof,
    write_payload,
)
from tests.support import require_tool

SIZES = pytest.mark.parametrize("size", [0, 1 << 20], ids=["empty", "1MiB"])


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A listening TCP socket on a kernel-chosen loopback port."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(WAIT_S)
        yield sock


def port_of(sock: socket.socket) -> str:
    return str(sock.getsockname()[1])


def listener_receiving(tool: str, path: Path) -> tuple[list[str], str]:
    """A real tool listening on port 0 that saves what it receives into ``path``."""
    if tool == "nc":
        return [require_tool("nc"), "-lvn", "127.0.0.1", "0"], NC_LISTENING
    argv = [require_tool("socat"), "-d", "-d", "-u", "TCP-LISTEN:0,bind=127.0.0.1"]
    return [*argv, f"CREATE:{path}"], SOCAT_LISTENING


def listener_sending(tool: str, path: Path) -> tuple[list[str], str]:
    """A real tool listening on port 0 that sends the file at ``path`` to its client."""
    if tool == "nc":  # -N: end its side once the file is sent (else it waits for ours)
        return [require_tool("nc"), "-lNvn", "127.0.0.1", "0"], NC_LISTENING
    argv = [require_tool("socat"), "-d", "-d", "-u", f"FILE:{path}"]
    return [*argv, "TCP-LISTEN:0,bind=127.0.0.1"], SOCAT_LISTENING


@SIZES
@pytest.mark.parametrize("tool", ["nc", "socat"])
def test_sends_stdin_byte_exact(spawn: Spawner, tmp_path: Path, tool: str, size: int) -> None:
    """`portd connect HOST PORT < file`: all of it, then a half-close the listener reads as EOF."""
    payload = write_payload(tmp_path / "payload", size)
    saved = tmp_path / "saved"
    argv, announced = listener_receiving(tool, saved)
    peer = spawn(*argv, stdout=saved if tool == "nc" else None)
    port = peer.port(announced)
    connect = spawn.portd("connect", "127.0.0.1", str(port), stdin=tmp_path / "payload")
    assert connect.wait() == 0, connect.stderr
    assert peer.wait() == 0, peer.stderr
    assert saved.read_bytes() == payload
    assert connect.output == b""
    assert connect.lines == []


@SIZES
@pytest.mark.parametrize("tool", ["nc", "socat"])
def test_receives_byte_exact(spawn: Spawner, tmp_path: Path, tool: str, size: int) -> None:
    """`portd connect HOST PORT > file`, typed at a terminal, from a listener serving a file.

    stdin is a terminal, as for a user: it never ends, so portd never half-closes and the
    session ends with the peer. (With stdin at EOF at once, portd half-closes at once,
    like `nc -N`, and netcat-openbsd's `nc -l` quits on that EOF, possibly before its
    file is all sent: a known nc -l behaviour, reproduced with `nc -N` as the client.)
    """
    payload = write_payload(tmp_path / "payload", size)
    received = tmp_path / "received"
    argv, announced = listener_sending(tool, tmp_path / "payload")
    peer = spawn(*argv, stdin=tmp_path / "payload" if tool == "nc" else subprocess.DEVNULL)
    port = peer.port(announced)
    controller, terminal = os.openpty()
    try:
        connect = spawn.portd("connect", "127.0.0.1", str(port), stdin=terminal, stdout=received)
        os.close(terminal)
        assert connect.wait() == 0, connect.stderr
    finally:
        os.close(controller)
    assert peer.wait() == 0, peer.stderr
    assert received.read_bytes() == payload


def test_default_eof_half_closes_and_reads_the_reply(spawn: Spawner, server: socket.socket) -> None:
    connect = spawn.portd("connect", "127.0.0.1", port_of(server), stdin=subprocess.PIPE)
    conn, _ = server.accept()
    with conn:
        connect.write(b"request\n")
        connect.close_stdin()
        assert read_to_eof(conn) == b"request\n"
        conn.sendall(b"reply after your EOF\n")
    assert connect.wait() == 0
    assert connect.output == b"reply after your EOF\n"


def test_close_on_eof_does_not_wait_for_the_reply(spawn: Spawner, server: socket.socket) -> None:
    connect = spawn.portd(
        "connect", "--close-on-eof", "127.0.0.1", port_of(server), stdin=subprocess.PIPE
    )
    conn, _ = server.accept()
    with conn:
        connect.write(b"fire and forget\n")
        connect.close_stdin()
        assert read_to_eof(conn) == b"fire and forget\n"
        assert connect.wait() == 0  # while the server still holds its side open
    assert connect.lines == []


def test_quit_after_eof_zero(spawn: Spawner, server: socket.socket) -> None:
    connect = spawn.portd("connect", "-q", "0", "127.0.0.1", port_of(server), stdin=subprocess.PIPE)
    conn, _ = server.accept()
    with conn:
        connect.close_stdin()
        assert read_to_eof(conn) == b""  # half-closed, like the default
        assert connect.wait(timeout=3) == 0


def test_verbose_names_each_address_tried_the_target_and_totals(
    spawn: Spawner, server: socket.socket, tmp_path: Path
) -> None:
    sent = write_payload(tmp_path / "payload", 5000)
    port = port_of(server)
    connect = spawn.portd("connect", "-v", "127.0.0.1", port, stdin=tmp_path / "payload")
    conn, _ = server.accept()
    with conn:
        assert read_to_eof(conn) == sent
        conn.sendall(b"thanks")
    assert connect.wait() == 0
    assert connect.output == b"thanks"
    assert re.fullmatch(rf"trying 127\.0\.0\.1:{port}: connected in [\d.]+ ms", connect.lines[0])
    assert connect.lines[1] == f"connected to 127.0.0.1:{port} (tcp)"
    assert re.fullmatch(
        f"received 6 bytes sha256 {hashlib.sha256(b'thanks').hexdigest()}; "
        f"sent 5000 bytes sha256 {hashlib.sha256(sent).hexdigest()}; " + r"\d+\.\d\d s",
        connect.lines[2],
    ), connect.lines
    assert connect.lines[3:] == [f"connection to 127.0.0.1:{port} closed"]


def test_refused_exits_1_with_one_line(spawn: Spawner) -> None:
    """The port is held by a bound socket that does not listen: refused, and no one can
    start listening on it during the test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = port_of(holder)
        connect = spawn.portd("connect", "127.0.0.1", port)
        assert connect.wait() == 1
    assert connect.lines == [
        f"portd: connect to 127.0.0.1:{port} (tcp) failed: connection refused: "
        "nothing listens there, or a firewall rejects it"
    ]


def test_connect_timeout_exits_1_with_one_line(spawn: Spawner) -> None:
    """A loopback listener whose accept queue is full drops new SYNs (Linux), which is
    what a filtered port looks like: the connect times out after -w."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # room for one connection, never accepted
        port = port_of(full)
        with socket.create_connection(("127.0.0.1", int(port)), timeout=WAIT_S):
            started = time.monotonic()
            connect = spawn.portd("connect", "-w", "0.5", "127.0.0.1", port)
            assert connect.wait() == 1
            elapsed = time.monotonic() - started
    assert connect.lines == [
        f"portd: connect to 127.0.0.1:{port} (tcp) failed: timed out after 0.5 s: "
        "a firewall drops it, the host is down, or its accept queue is full"
    ]
    assert 0.5 <= elapsed < 5


def test_reset_by_the_peer_exits_1(spawn: Spawner, server: socket.socket) -> None:
    port = port_of(server)
    connect = spawn.portd("connect", "127.0.0.1", port, stdin=subprocess.PIPE)
    conn, _ = server.accept()
    conn.sendall(b"x")
    connect.expect_output(1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # a reset, not an orderly end
    assert connect.wait() == 1
    assert connect.lines == [f"portd: 127.0.0.1:{port}: connection lost: Connection reset by peer"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("127.0.0.1", "99999"), "portd: port 99999 is out of range; expected 0-65535"),
        (("127.0.0.1", "no-such-service"), "portd: bad port 'no-such-service'; expected 0-65535 "
                                           "or a service name from /etc/services"),
    ],
    ids=["range", "service"],
)  # fmt: skip
def test_bad_port_exits_64(spawn: Spawner, args: tuple[str, ...], line: str) -> None:
    connect = spawn.portd("connect", *args)
    assert connect.wait() == 64
    assert connect.lines == [line]


def test_udp_exchanges_with_an_nc_listener(spawn: Spawner) -> None:
    nc = spawn(require_tool("nc"), "-luvn", "127.0.0.1", "0", stdin=subprocess.PIPE)
    port = nc.port(NC_LISTENING)
    connect = spawn.portd("connect", "-u", "127.0.0.1", str(port), stdin=subprocess.PIPE)
    connect.write(b"hello nc\n")
    assert nc.expect_output(9) == b"hello nc\n"
    nc.write(b"hello portd\n")
    assert connect.expect_output(12) == b"hello portd\n"
    connect.interrupt()
    assert connect.wait() == 130
    assert connect.lines == []


def test_udp_round_trip_then_quit(spawn: Spawner) -> None:
    """Each stdin read is one datagram; -q 0 ends the session once stdin has ended."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        echo.settimeout(WAIT_S)
        connect = spawn.portd("connect", "-u", "-q", "0", "127.0.0.1", port_of(echo),
                              stdin=subprocess.PIPE)  # fmt: skip
        connect.write(b"datagram one")
        data, source = echo.recvfrom(100)
        echo.sendto(data.upper(), source)
        assert connect.expect_output(12) == b"DATAGRAM ONE"
        connect.close_stdin()
        assert connect.wait() == 0
    assert connect.lines == []


def test_udp_to_a_closed_port_exits_1(spawn: Spawner) -> None:
    """The holder is connected elsewhere, so the port stays taken but datagrams from
    anyone else get ICMP port unreachable: a closed UDP port without any race."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.connect(("127.0.0.1", 9))
        port = port_of(holder)
        connect = spawn.portd("connect", "-u", "127.0.0.1", port, stdin=subprocess.PIPE)
        connect.write(b"anyone?")
        assert connect.wait() == 1
    assert connect.lines == [
        f"portd: 127.0.0.1:{port}: connection refused (nothing listens on that UDP port)"
    ]


def test_ctrl_c_during_a_transfer_exits_130(spawn: Spawner, server: socket.socket) -> None:
    connect = spawn.portd("connect", "127.0.0.1", port_of(server), stdin=subprocess.PIPE)
    conn, _ = server.accept()
    with conn:
        conn.sendall(b"busy")
        connect.expect_output(4)
        connect.interrupt()
        assert connect.wait(timeout=3) == 130
    assert connect.lines == []
