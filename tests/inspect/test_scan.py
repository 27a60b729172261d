"""`portd scan HOST PORTS` as a real process against loopback ports the test holds.

Every scanned port is held by a socket of this test for the whole scan: open ones listen,
closed ones are bound without listening (refused, and nobody else can take them), so
the expected output is exact.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import WAIT_S, Spawner

# Names from /etc/services above 1024 that a test may hold; the first one free is used.
SERVICE_CANDIDATES = ("x11-1", "x11-2", "x11-3", "webcache", "postgresql", "mysql", "x11")


@dataclass
class Ports:
    """The ports of one scan: a block of four (open, closed, open, closed), one more of
    each, and an open port known by its /etc/services name."""

    block: int
    extra_open: int
    extra_closed: int
    service: str
    service_port: int

    @property
    def open(self) -> list[int]:
        return sorted([self.block, self.block + 2, self.extra_open, self.service_port])

    @property
    def spec(self) -> str:
        block = f"{self.block}-{self.block + 3}"
        return f"{block},{self.extra_open},{self.extra_closed},{self.service}"


def hold(port: int, listening: bool, held: list[socket.socket]) -> int:
    """Bind ``port`` (0: any) on 127.0.0.1 and keep it; listen if asked. Raises OSError."""
    sock = socket.socket()
    # Earlier tests' client connections leave TIME_WAIT on neighbouring (even) ports.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        if listening:
            sock.listen()
    except OSError:
        sock.close()
        raise
    held.append(sock)
    return int(sock.getsockname()[1])


def hold_block(held: list[socket.socket]) -> int:
    """Four consecutive ports, each bound at once (none is chosen first and bound later).

    Tried below the ephemeral range: there, other programs' client connections do not
    leave TIME_WAIT entries that refuse a bind.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _attempt in range(100):
        start = random.randrange(10000, max(low, 10008) - 4)
        block: list[socket.socket] = []
        try:
            for offset, listening in enumerate((True, False, True, False)):
                hold(start + offset, listening, block)
        except OSError:
            for sock in block:
                sock.close()
            continue
        held.extend(block)
        return start
    pytest.fail("no four consecutive free ports on 127.0.0.1")


def hold_service(held: list[socket.socket]) -> tuple[str, int]:
    for name in SERVICE_CANDIDATES:
        try:
            port = socket.getservbyname(name, "tcp")
            return name, hold(port, True, held)
        except OSError:
            continue
    pytest.skip(f"none of {SERVICE_CANDIDATES} is in /etc/services and free")


@pytest.fixture
def ports() -> Iterator[Ports]:
    held: list[socket.socket] = []
    try:
        block = hold_block(held)
        service, service_port = hold_service(held)
        yield Ports(block, hold(0, True, held), hold(0, False, held), service, service_port)
    finally:
        for sock in held:
            sock.close()


def service_column(port: int) -> str:
    try:
        return socket.getservbyport(port, "tcp")
    except OSError:
        return "-"


def test_prints_exactly_the_open_ports(spawn: Spawner, ports: Ports) -> None:
    scan = spawn.portd("scan", "127.0.0.1", ports.spec)
    assert scan.wait() == 0
    rows = [f"{f'{port}/tcp':<10}{service_column(port)}" for port in ports.open]
    assert scan.output.decode().splitlines() == ["PORT      SERVICE", *rows]
    assert (
        f"{ports.service_port}/tcp  {ports.service}" in rows[ports.open.index(ports.service_port)]
    )
    assert scan.lines == ["4 of 7 ports open on 127.0.0.1 (127.0.0.1)"]


def test_json_lists_exactly_the_open_ports(spawn: Spawner, ports: Ports) -> None:
    scan = spawn.portd("scan", "--json", "127.0.0.1", ports.spec)
    assert scan.wait() == 0
    assert json.loads(scan.output) == {
        "host": "127.0.0.1",
        "address": "127.0.0.1",
        "scanned": 7,
        "open": [
            {"port": port, "protocol": "tcp", "state": "open",
             "service": None if service_column(port) == "-" else service_column(port)}
            for port in ports.open
        ],
    }  # fmt: skip
    assert scan.lines == []


def test_a_silent_port_costs_one_timeout_not_more(spawn: Spawner) -> None:
    """A port that drops SYNs (a listener with a full accept queue) is not open; with
    many of them in flight at once, the scan takes about one --timeout."""
    held: list[socket.socket] = []
    clients: list[socket.socket] = []
    try:
        silent = [hold(0, False, held) for _ in range(5)]
        for sock in held:
            sock.listen(0)
            clients.append(socket.create_connection(sock.getsockname(), timeout=WAIT_S))
        started = time.monotonic()
        spec = ",".join(map(str, silent))
        scan = spawn.portd("scan", "--timeout", "0.5", "--json", "127.0.0.1", spec)
        assert scan.wait() == 0
        elapsed = time.monotonic() - started
    finally:
        for sock in clients + held:
            sock.close()
    assert json.loads(scan.output)["open"] == []
    assert 0.5 <= elapsed < 3


def test_bounded_concurrency_still_scans_every_port(spawn: Spawner, ports: Ports) -> None:
    scan = spawn.portd("scan", "--concurrency", "1", "--json", "127.0.0.1", ports.spec)
    assert scan.wait() == 0
    assert [row["port"] for row in json.loads(scan.output)["open"]] == ports.open


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ("x-y", "portd: bad port 'x-y'; expected 0-65535 or a service name from /etc/services"),
        ("90-80", "portd: bad port range '90-80'; expected LOW-HIGH with LOW <= HIGH"),
        ("22,,80", "portd: bad port list '22,,80'; expected e.g. 22,80,8000-8100"),
        ("70000", "portd: port 70000 is out of range; expected 0-65535"),
        ("0", "portd: no port to scan in '0' (ports are 1-65535)"),
        ("no-such-service", "portd: bad port 'no-such-service'; expected 0-65535 or a service "
                            "name from /etc/services"),
    ],
    ids=["letters", "reversed", "empty-item", "range", "zero", "service"],
)  # fmt: skip
def test_bad_port_spec_exits_64_with_one_line(spawn: Spawner, spec: str, line: str) -> None:
    scan = spawn.portd("scan", "127.0.0.1", spec)
    assert scan.wait() == 64
    assert scan.lines == [line]
    assert scan.output == b""


def test_bad_concurrency_exits_64_with_usage(spawn: Spawner) -> None:
    scan = spawn.portd("scan", "--concurrency", "0", "127.0.0.1", "80")
    assert scan.wait() == 64
    assert scan.lines[0].startswith("usage: portd scan ")
    assert scan.lines[-1] == (
        "portd scan: error: argument --concurrency: expected a positive integer, got '0'"
    )


def test_ctrl_c_exits_130_at_once(spawn: Spawner) -> None:
    """Interrupted while a silent port keeps the scan waiting for its --timeout."""
    with socket.create_server(("127.0.0.1", 0)) as witness, socket.socket() as silent:
        witness.settimeout(WAIT_S)
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        with socket.create_connection(silent.getsockname(), timeout=WAIT_S):  # queue now full
            ports = f"{silent.getsockname()[1]},{witness.getsockname()[1]}"
            scan = spawn.portd("scan", "--timeout", "30", "127.0.0.1", ports)
            witness.accept()[0].close()  # the scan is under way
            scan.interrupt()
            assert scan.wait(timeout=3) == 130
    assert scan.lines == []
    assert scan.output == b""


def test_an_unresolvable_host_exits_1_with_one_line(spawn: Spawner) -> None:
    """The same code and words as `portd connect`: names under .invalid never resolve."""
    scan = spawn.portd("scan", "nonexistent.invalid", "80")
    assert scan.wait() == 1
    assert len(scan.lines) == 1
    assert scan.lines[0].startswith("portd: cannot resolve 'nonexistent.invalid': ")
