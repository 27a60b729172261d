"""Start-up guard, not a timing test: the shell commands never import the daemon's heavy
machinery (asyncio, anyio, structlog, uvloop), psutil, dataclasses, entry points, or
ssl and cryptography unless --tls asks for them.

Each command runs as a real process under ``python -X importtime``, which names every
module imported on stderr, through a whole session (for listen: accept, relay, -v).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import Process, Spawner, tcp_client

HEAVY = frozenset(
    {"asyncio", "anyio", "structlog", "uvloop", "psutil", "dataclasses", "importlib.metadata",
     "ssl", "cryptography"}  # TLS: only when --tls is given
)  # fmt: skip
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$")


def imported(process: Process) -> set[str]:
    """The modules a finished ``-X importtime`` process imported."""
    names = {m.group(1) for line in process.lines if (m := IMPORT_LINE.match(line))}
    assert "portd.cli" in names, process.stderr  # the parse itself works
    return names


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(10)
        yield sock


def test_importing_the_cli_stays_light(spawn: Spawner) -> None:
    code = f"import sys, portd.cli; print(sorted(set({sorted(HEAVY)!r}) & set(sys.modules)))"
    check = spawn(sys.executable, "-c", code)
    assert check.wait() == 0, check.stderr
    assert check.output == b"[]\n"


def test_listen_in_stdio_mode_stays_light(spawn: Spawner) -> None:
    listen = spawn(sys.executable, "-X", "importtime", "-m", "portd", "listen", "-v", "127.0.0.1:0")
    with tcp_client(listen.port()) as client:
        client.sendall(b"hello")
    assert listen.wait() == 0
    assert listen.output == b"hello"
    assert imported(listen) & HEAVY == set()


def test_connect_stays_light(spawn: Spawner, server: socket.socket) -> None:
    port = str(server.getsockname()[1])
    connect = spawn(sys.executable, "-X", "importtime", "-m", "portd", "connect", "127.0.0.1", port)
    conn, _ = server.accept()
    with conn:
        conn.sendall(b"hi")
    assert connect.wait() == 0
    assert connect.output == b"hi"
    assert imported(connect) & HEAVY == set()


@pytest.mark.parametrize("command", ["wait", "scan", "services", "ports"])
def test_inspect_commands_stay_light(spawn: Spawner, server: socket.socket, command: str) -> None:
    port = str(server.getsockname()[1])
    args = {"wait": [f"127.0.0.1:{port}"], "scan": ["127.0.0.1", port], "services": ["80"],
            "ports": ["-a", "--port", port]}  # fmt: skip
    process = spawn(sys.executable, "-X", "importtime", "-m", "portd", command, *args[command])
    assert process.wait() == 0, process.stderr
    assert imported(process) & HEAVY == set()


def test_unix_stream_listen_and_connect_stay_light(spawn: Spawner, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listen = spawn(sys.executable, "-X", "importtime", "-m", "portd", "listen", "-v", "-U", path)
    listen.expect("^listening on unix:")
    connect = spawn(sys.executable, "-X", "importtime", "-m", "portd", "connect", "-vU", path)
    assert connect.wait() == 0, connect.stderr
    assert listen.wait() == 0, listen.stderr
    assert imported(listen) & HEAVY == set()
    assert imported(connect) & HEAVY == set()


def test_unix_datagram_listen_and_connect_stay_light(spawn: Spawner, tmp_path: Path) -> None:
    """The client's own socket in a directory of its own (tempfile) costs no heavy import."""
    listen_path, echo_path = str(tmp_path / "l.sock"), str(tmp_path / "e.sock")
    listen = spawn(sys.executable, "-X", "importtime", "-m", "portd", "listen", "-vuU", listen_path)
    listen.expect("^listening on unix:")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as echo:
        echo.bind(echo_path)
        echo.settimeout(10)
        echo.sendto(b"to listen", listen_path)
        assert listen.expect_output(9) == b"to listen"
        connect = spawn(sys.executable, "-X", "importtime", "-m", "portd", "connect",
                        "-q", "0", "-uU", echo_path, stdin=subprocess.PIPE)  # fmt: skip
        connect.write(b"ping")
        data, sender = echo.recvfrom(10)
        echo.sendto(data, sender)
        assert connect.expect_output(4) == b"ping"
        connect.close_stdin()
        assert connect.wait() == 0, connect.stderr
    listen.interrupt()
    assert listen.wait() == 130
    assert imported(listen) & HEAVY == set()
    assert imported(connect) & HEAVY == set()


def test_listen_tls_imports_ssl_and_no_daemon_machinery(spawn: Spawner) -> None:
    """--tls pays for ssl and cryptography (an ephemeral certificate), nothing more."""
    listen = spawn(sys.executable, "-X", "importtime", "-m", "portd", "listen", "--tls",
                   "127.0.0.1:0")  # fmt: skip
    port = listen.port()
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with tcp_client(port) as raw, context.wrap_socket(raw) as client:
        client.sendall(b"hello")
        client.unwrap()
    assert listen.wait() == 0
    assert listen.output == b"hello"
    names = imported(listen)
    assert {"ssl", "cryptography"} <= names
    # cryptography's own serialization module imports dataclasses: allowed with --tls.
    assert names & HEAVY - {"dataclasses"} == {"ssl", "cryptography"}
