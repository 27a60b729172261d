"""UDP listeners keep their sockets exclusive on every loop: no other user can co-bind them.

uvloop's datagram transport adopts a socket through libuv's uv_udp_open(), which turns
SO_REUSEADDR on; with it, an unprivileged process could bind the same address beside a
root portd and receive the clients' datagrams. These tests try that as nobody against
the testing API, the daemon and ``portd listen -u -k --echo``, on both loops.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from portd.testing import serve
from tests.processes import Spawner, spawn
from tests.support import Daemon, write_config

__all__ = ["spawn"]
LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
CO_BIND = """\
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    sock.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as exc:
    print(exc.errno)
else:
    print("bound")
"""


def co_bind_as_nobody(port: int) -> str:
    """What another user gets binding 127.0.0.1:port with SO_REUSEADDR: an errno, or "bound"."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to act as another user")
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    result = subprocess.run(
        [*nobody, sys.executable, "-c", CO_BIND, str(port)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def udp_echo(port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(payload, ("127.0.0.1", port))
        return client.recv(65536)


@LOOPS
def test_testing_server_socket_cannot_be_co_bound_by_another_user(loop: str) -> None:
    with serve("echo", protocol="udp", loop=loop) as server:
        (sock,) = server.running.sockets
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        assert co_bind_as_nobody(server.port) == "98"  # EADDRINUSE
        assert udp_echo(server.port, b"still mine") == b"still mine"


@LOOPS
def test_daemon_udp_listener_cannot_be_co_bound_by_another_user(
    tmp_path: os.PathLike[str], loop: str
) -> None:
    path = write_config(
        tmp_path,  # type: ignore[arg-type]
        f'[daemon]\nloop = "{loop}"\n[[listener]]\nname = "u"\nbind = "127.0.0.1:0"\n'
        'protocol = "udp"\nhandler = "echo"\n',
    )
    daemon = Daemon(["-c", str(path)])
    try:
        port = daemon.ready()["u"]
        assert co_bind_as_nobody(port) == "98"  # EADDRINUSE
        assert udp_echo(port, b"ping") == b"ping"
    finally:
        daemon.stop()


def test_listen_udp_echo_cannot_be_co_bound_by_another_user(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "-u", "-k", "--echo", "127.0.0.1:0")
    port = listen.port()
    assert udp_echo(port, b"serving") == b"serving"  # the loop has the socket by now
    assert co_bind_as_nobody(port) == "98"
    assert udp_echo(port, b"ping") == b"ping"
