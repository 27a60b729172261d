"""`portd listen` failing to start, as a real process: the daemon's one-line messages and
exit codes (69 busy or unavailable, 77 privileged, 64 usage), never a traceback."""

from __future__ import annotations

import os
import shutil
import socket

import psutil
import pytest

from portd.privileges import unprivileged_port_start
from tests.conftest import needs_ipv6
from tests.processes import Spawner, tcp_client
from tests.support import PORTD

ME = f"pid {os.getpid()} ({psutil.Process().name()})"


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_busy_port_exits_69_naming_the_holder(spawn: Spawner, protocol: str) -> None:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if protocol == "tcp":
            holder.listen()
        port = holder.getsockname()[1]
        flags = ["-u"] if protocol == "udp" else []
        listen = spawn.portd("listen", *flags, f"127.0.0.1:{port}")
        assert listen.wait() == 69
    assert listen.lines == [
        f"portd: listen 127.0.0.1:{port}: 127.0.0.1:{port} ({protocol}) is already in use by {ME}"
    ]


def test_busy_port_with_a_handler_exits_69_naming_the_holder(spawn: Spawner) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        listen = spawn.portd("listen", "--echo", f"127.0.0.1:{port}")
        assert listen.wait() == 69
    assert len(listen.lines) == 1, listen.lines
    assert listen.lines[0].startswith("portd: ")
    assert listen.lines[0].endswith(f"127.0.0.1:{port} (tcp) is already in use by {ME}")


def test_unavailable_address_exits_69(spawn: Spawner) -> None:
    """192.0.2.0/24 (TEST-NET-1) is never a local address; binding it sends nothing."""
    listen = spawn.portd("listen", "192.0.2.1:0")
    assert listen.wait() == 69
    assert listen.lines == [
        "portd: listen 192.0.2.1:0: 192.0.2.1:0 (tcp): address not available on this host"
    ]


@pytest.mark.skipif(unprivileged_port_start() == 0, reason="every port is unprivileged here")
@pytest.mark.parametrize("bind", ["127.0.0.1:80", "127.0.0.1:http"])
def test_privileged_port_without_capability_exits_77(spawn: Spawner, bind: str) -> None:
    """As nobody (setpriv when we are root), so CAP_NET_BIND_SERVICE is absent; checked
    before binding, so nothing is bound even for a moment."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    listen = spawn(*prefix, *PORTD, "listen", bind)
    assert listen.wait() == 77, listen.stderr
    start = unprivileged_port_start()
    assert listen.lines == [
        f"portd: listen 127.0.0.1:80: port 80 is privileged (net.ipv4.ip_unprivileged_port_start = "
        f"{start}) and this process lacks CAP_NET_BIND_SERVICE; use socket activation "
        f"(portd.socket), AmbientCapabilities=CAP_NET_BIND_SERVICE, or a port >= {start}"
    ]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("70000",), "portd: port 70000 is out of range; expected 0-65535"),
        (("-u", "127.0.0.1:http"), "portd: service 'http' is 80/tcp in /etc/services, not udp"),
        (("-4", "[::1]:0"), "portd: [::1]:0 has no IPv4 address"),
        (("-6", "127.0.0.1:0"), "portd: 127.0.0.1:0 has no IPv6 address"),
        (("127.0.0.1:",), "portd: bad port ''; expected 0-65535 or a service name from "
                          "/etc/services"),
        (("::1:0",), "portd: bad bind '::1:0'; put IPv6 addresses in brackets: [::1]:PORT"),
    ],
    ids=["range", "udp-service", "ipv4", "ipv6", "empty-port", "brackets"],
)  # fmt: skip
def test_bad_bind_exits_64_with_one_line(spawn: Spawner, args: tuple[str, ...], line: str) -> None:
    listen = spawn.portd("listen", *args)
    assert listen.wait() == 64
    assert listen.lines == [line]


def test_unknown_option_exits_64_with_usage(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "--bogus", "127.0.0.1:0")
    assert listen.wait() == 64
    assert listen.lines[0].startswith("usage: portd")
    assert listen.lines[-1] == "portd listen: error: unknown option --bogus"
    assert "Traceback" not in listen.stderr


def test_missing_port_exits_64_with_one_line(spawn: Spawner) -> None:
    listen = spawn.portd("listen")
    assert listen.wait() == 64
    assert listen.lines == ["portd: no port: expected [HOST:]PORT, HOST PORT or -p PORT"]


@needs_ipv6
def test_listens_on_ipv6_loopback(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "[::1]:0")
    port = int(listen.expect(r"^listening on \[::1\]:(\d+) \(tcp\)$").group(1))
    with tcp_client(port, "::1") as client:
        client.sendall(b"over v6")
    assert listen.wait() == 0
    assert listen.output == b"over v6"
