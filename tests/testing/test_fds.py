"""bound_socket() and listen_fds(): a child process serves on a port the test bound,
the systemd way, without binding anything itself."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from portd.testing import bound_socket, listen_fds
from tests.support import Daemon, write_config

CHILD = """
import json, os, socket, sys
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
inherited = [socket.socket(fileno=3 + i) for i in range(int(os.environ["LISTEN_FDS"]))]
report = {
    "pid_matches": os.environ["LISTEN_PID"] == str(os.getpid()),
    "names": os.environ.get("LISTEN_FDNAMES"),
    "fds": fds,
    "ports": [sock.getsockname()[1] for sock in inherited],
}
print(json.dumps(report), flush=True)
conn, _ = inherited[0].accept()
conn.sendall(conn.recv(64).upper())
"""


def test_bound_socket_listens_in_blocking_mode_like_systemds() -> None:
    with bound_socket() as sock, socket.create_connection(sock.getsockname(), timeout=5):
        assert sock.getblocking()
        assert sock.getsockname()[0] == "127.0.0.1"
        accepted, _ = sock.accept()  # the connection waited in the backlog
        accepted.close()
    with bound_socket("127.0.0.1:0", "udp") as datagram:
        assert datagram.type == socket.SOCK_DGRAM


def test_bound_socket_wants_exactly_one_address() -> None:
    with pytest.raises(ValueError, match=r"bound_socket\('\*:0'\) would open 2 sockets"):
        bound_socket("*:0")


def test_a_plain_child_finds_its_sockets_at_fd_3_and_serves_without_binding() -> None:
    with bound_socket() as first, bound_socket() as second:
        ports = [first.getsockname()[1], second.getsockname()[1]]
        fds = listen_fds([first, second], names=["web", "admin"])
        child = fds.popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            report = json.loads(child.stdout.readline())
            with socket.create_connection(first.getsockname(), timeout=10) as client:
                client.sendall(b"activated")
                assert client.recv(64) == b"ACTIVATED"
        finally:
            assert child.wait(timeout=10) == 0
            if child.stdout:
                child.stdout.close()
    assert report["pid_matches"] is True
    assert report["names"] == "web:admin"
    assert report["ports"] == ports
    # 0-2, the two sockets at 3 and 4, and whatever Python opened for itself after exec
    # (os.listdir's own fd): the originals and the shim's copies did not follow.
    assert report["fds"][:5] == [0, 1, 2, 3, 4]
    assert len(report["fds"]) == 6


def test_portd_serves_the_passed_socket_with_activation_only(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        textwrap.dedent("""
            [[listener]]
            name = "web"
            bind = "127.0.0.1:0"
            handler = "echo"
        """),
    )
    with bound_socket() as sock:
        port = sock.getsockname()[1]
        fds = listen_fds(sock, names=["web"])
        daemon = Daemon(
            ["-c", str(config), "--activation-only"], prefix=fds.prefix, pass_fds=fds.pass_fds
        )
        try:
            started = daemon.wait_for("listener_started")
            assert (started["origin"], started["port"]) == ("inherited", port)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(b"no race")
                assert client.recv(64) == b"no race"
        finally:
            daemon.stop()


def test_listen_fds_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="at least one open socket"):
        listen_fds([])
    with bound_socket() as sock:
        with pytest.raises(ValueError, match="2 names for 1 sockets"):
            listen_fds(sock, names=["a", "b"])
        with pytest.raises(ValueError, match="cannot contain ':'"):
            listen_fds(sock, names=["a:b"])
        fds = listen_fds(sock)
        assert fds.command(["server", "--flag"])[-2:] == ["server", "--flag"]
        assert fds.pass_fds == (sock.fileno(),)
