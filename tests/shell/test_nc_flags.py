"""What OpenBSD nc users type, side by side: each flag form runs against the real nc and
against portd with the same arguments, the same input and the same peer, and both must
give the same bytes (stdout, and what the peer received) and the same exit code.

nc gets ``-v`` added where the form lacks it, only so the test can read the port it
announced (``Listening on 127.0.0.1 PORT``); -v changes nothing but stderr. Every
listener binds port 0; a closed port is a bound socket that never listens (refused,
and nobody else can take it meanwhile).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from tests.processes import NC_LISTENING, PORTD_LISTENING, WAIT_S, Spawner, read_to_eof
from tests.support import PORTD, require_tool

TOOLS = pytest.mark.parametrize("tool", ["nc", "portd"])


class Outcome(NamedTuple):
    """What a user can observe of one run."""

    status: int
    stdout: bytes
    peer_received: bytes


def command(tool: str, subcommand: str, args: list[str]) -> list[str]:
    """``portd listen ARGS`` or ``nc ARGS`` (listen forms carry their own -l)."""
    if tool == "portd":
        return [*PORTD, subcommand, *args]
    nc = [require_tool("nc"), *args]
    if subcommand == "listen" and not any(a.startswith("-") and "v" in a for a in args):
        nc.insert(1, "-v")
    return nc


def run_listener(spawn: Spawner, tool: str, args: list[str], stdin: bytes, send: bytes) -> Outcome:
    """The listener gets ``stdin``; a client sends ``send``, half-closes and reads to EOF."""
    listener = spawn(*command(tool, "listen", args), stdin=subprocess.PIPE)
    port = listener.port(PORTD_LISTENING if tool == "portd" else NC_LISTENING)
    listener.write(stdin)
    listener.close_stdin()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as client:
        client.sendall(send)
        client.shutdown(socket.SHUT_WR)
        received = read_to_eof(client)
    return Outcome(listener.wait(), bytes(listener.output), received)


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(WAIT_S)
        yield sock


def run_connector(
    spawn: Spawner,
    tool: str,
    args: list[str],
    server: socket.socket,
    *,
    stdin: bytes,
    reply: bytes,
    expect: int | None = None,
) -> tuple[Outcome, str]:
    """The client gets ``stdin``; the server reads what it expects (``expect`` bytes, by
    default as many as ``stdin``), answers ``reply``, ends its side and reads the rest.

    Returns:
        What was observed, and the address the server saw the client connect from.
    """
    port = str(server.getsockname()[1])
    expect = len(stdin) if expect is None else expect
    words = [arg.replace("PORT", port) for arg in args]
    client = spawn(*command(tool, "connect", words), stdin=subprocess.PIPE)
    client.write(stdin)
    client.close_stdin()
    conn, peer = server.accept()
    with conn:
        conn.settimeout(WAIT_S)
        received = read_exactly(conn, expect)  # nc half-closes only with -N: never wait on it
        conn.sendall(reply)
        conn.shutdown(socket.SHUT_WR)
        received += read_to_eof(conn)  # anything more, until the client is gone
    return Outcome(client.wait(), bytes(client.output), received), peer[0]


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return data


@pytest.mark.parametrize(
    "args",
    [
        ["-l", "127.0.0.1", "0"],
        ["-lvn", "127.0.0.1", "0"],
        ["-lN", "127.0.0.1", "0"],
        ["-lvnp", "0", "-s", "127.0.0.1"],
        ["-l", "-n", "-p", "0", "-s", "127.0.0.1"],
        ["-lnvp0", "-s127.0.0.1"],
    ],
    ids=["l-host-port", "lvn", "lN", "lvnp-s", "p-s-apart", "attached-values"],
)
def test_listen_forms_match_nc(spawn: Spawner, args: list[str]) -> None:
    outcomes = {
        tool: run_listener(spawn, tool, args, b"answer\n", b"request\n") for tool in ("nc", "portd")
    }
    assert outcomes["portd"] == outcomes["nc"] == Outcome(0, b"request\n", b"answer\n")


def test_listen_crlf_matches_nc(spawn: Spawner) -> None:
    """-C: a LF not after a CR goes out as CRLF; an existing CRLF is left alone."""
    stdin = b"a\nb\r\nc"
    outcomes = {
        tool: run_listener(spawn, tool, ["-lC", "127.0.0.1", "0"], stdin, b"x")
        for tool in ("nc", "portd")
    }
    assert outcomes["portd"] == outcomes["nc"] == Outcome(0, b"x", b"a\r\nb\r\nc")


@TOOLS
def test_listen_idle_timeout_ends_with_0_as_nc(spawn: Spawner, tool: str) -> None:
    """-w 1 under -l: listening waits on; an idle connection ends after 1 s, exit 0."""
    listener = spawn(*command(tool, "listen", ["-l", "-w", "1", "127.0.0.1", "0"]),
                     stdin=subprocess.PIPE)  # fmt: skip
    port = listener.port(PORTD_LISTENING if tool == "portd" else NC_LISTENING)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as client:
        client.sendall(b"hi")
        started = time.monotonic()
        assert read_to_eof(client) == b""  # stdin stays open: only the timeout ends it
        waited = time.monotonic() - started
    assert listener.wait() == 0
    assert listener.output == b"hi"
    assert 0.8 <= waited < 5


@pytest.mark.parametrize(
    "args",
    [
        ["127.0.0.1", "PORT"],
        ["-N", "127.0.0.1", "PORT"],
        ["-n", "127.0.0.1", "PORT"],
        ["-Nn", "-w", "5", "127.0.0.1", "PORT"],
        ["-s", "127.0.0.2", "127.0.0.1", "PORT"],
    ],
    ids=["host-port", "N", "n", "bundle-w", "source-address"],
)
def test_connect_forms_match_nc(spawn: Spawner, server: socket.socket, args: list[str]) -> None:
    outcomes = {
        tool: run_connector(spawn, tool, args, server, stdin=b"ping\n", reply=b"pong\n")
        for tool in ("nc", "portd")
    }
    expected_peer = "127.0.0.2" if "-s" in args else "127.0.0.1"
    assert outcomes["portd"] == outcomes["nc"] == (Outcome(0, b"pong\n", b"ping\n"), expected_peer)


def test_connect_crlf_matches_nc(spawn: Spawner, server: socket.socket) -> None:
    stdin = b"GET / HTTP/1.0\n\n"
    outcomes = {
        tool: run_connector(
            spawn, tool, ["-C", "127.0.0.1", "PORT"], server, stdin=stdin, reply=b"ok", expect=18
        )[0]
        for tool in ("nc", "portd")
    }
    assert outcomes["portd"] == outcomes["nc"] == Outcome(0, b"ok", b"GET / HTTP/1.0\r\n\r\n")


@TOOLS
def test_connect_line_interval_as_nc(spawn: Spawner, server: socket.socket, tool: str) -> None:
    """-i 1: the first line at once, each next one a second later (nc sleeps after a line)."""
    port = str(server.getsockname()[1])
    client = spawn(*command(tool, "connect", ["-i", "1", "127.0.0.1", port]),
                   stdin=subprocess.PIPE)  # fmt: skip
    client.write(b"a\nb\n")
    client.close_stdin()
    conn, _ = server.accept()
    with conn:
        conn.settimeout(WAIT_S)
        first = conn.recv(16)
        started = time.monotonic()
        second = conn.recv(16)
        gap = time.monotonic() - started
        conn.shutdown(socket.SHUT_WR)  # nc half-closes only with -N: end it from here
        rest = read_to_eof(conn)
    assert client.wait() == 0
    assert (first, second, rest) == (b"a\n", b"b\n", b"")
    assert 0.8 <= gap < 5


@TOOLS
def test_connect_idle_timeout_ends_with_0_as_nc(
    spawn: Spawner, server: socket.socket, tool: str
) -> None:
    """-w 1 after connecting: no byte either way for 1 s closes the connection, exit 0."""
    port = str(server.getsockname()[1])
    client = spawn(*command(tool, "connect", ["-w", "1", "127.0.0.1", port]),
                   stdin=subprocess.PIPE)  # fmt: skip
    conn, _ = server.accept()
    with conn:
        conn.settimeout(WAIT_S)
        started = time.monotonic()
        assert read_to_eof(conn) == b""
        waited = time.monotonic() - started
    assert client.wait() == 0
    assert 0.8 <= waited < 5


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, so a connect
    neither succeeds nor is refused until the client gives up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        port = sock.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                filler.connect_ex(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


@TOOLS
def test_connect_timeout_exits_1_as_nc(spawn: Spawner, tool: str, full_backlog: int) -> None:
    started = time.monotonic()
    client = spawn(*command(tool, "connect", ["-w", "1", "127.0.0.1", str(full_backlog)]))
    assert client.wait() == 1
    assert client.output == b""
    assert time.monotonic() - started < 5


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port held bound but never listening: a connect is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("flags", [["-z"], ["-zv"], ["-z", "-w", "2"]], ids=["z", "zv", "z-w"])
def test_zero_io_exit_codes_match_nc(
    spawn: Spawner, server: socket.socket, closed_port: int, flags: list[str]
) -> None:
    """-z: exit 0 when the port accepts, 1 when refused; nothing on stdout, nothing sent."""
    open_port = str(server.getsockname()[1])
    codes: dict[str, list[int]] = {}
    for tool in ("nc", "portd"):
        for port in (open_port, str(closed_port), f"{open_port}-{open_port}"):
            process = spawn(*command(tool, "connect", [*flags, "127.0.0.1", port]))
            codes.setdefault(tool, []).append(process.wait())
            assert process.output == b""
            if port != str(closed_port):
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(WAIT_S)
                    assert read_to_eof(conn) == b""
    assert codes["portd"] == codes["nc"] == [0, 1, 0]


@TOOLS
def test_numeric_only_refuses_a_name_with_1_as_nc(spawn: Spawner, tool: str) -> None:
    process = spawn(*command(tool, "connect", ["-n", "localhost", "1"]))
    assert process.wait() == 1
    assert process.output == b""


@TOOLS
def test_a_busy_source_port_exits_1_as_nc(
    spawn: Spawner, server: socket.socket, closed_port: int, tool: str
) -> None:
    """-p PORT binds the source port: one held by another socket fails the bind, exit 1."""
    target = str(server.getsockname()[1])
    args = ["-p", str(closed_port), "127.0.0.1", target]
    process = spawn(*command(tool, "connect", args))
    assert process.wait() == 1
    assert process.output == b""


def test_busy_source_port_is_one_line(
    spawn: Spawner, server: socket.socket, closed_port: int
) -> None:
    target = str(server.getsockname()[1])
    process = spawn.portd("connect", "-s", "127.0.0.1", "-p", str(closed_port), "127.0.0.1", target)
    assert process.wait() == 1
    assert process.lines == [
        f"portd: cannot bind source 127.0.0.1:{closed_port}: Address already in use"
    ]
