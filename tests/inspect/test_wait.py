"""`portd wait HOST:PORT ...` as a real process: exit 0 once every address accepts, exit 1
with one line per address still down.

A port that "opens late" is a socket the test has bound but not yet put in listen mode:
it refuses connections, nobody else can take the port meanwhile, and listen() opens it.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from tests.processes import WAIT_S, Spawner


@pytest.fixture
def closed_ports() -> Iterator[list[socket.socket]]:
    """Three bound, not listening TCP sockets: refused now, opened by calling listen()."""
    sockets = [socket.socket() for _ in range(3)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    yield sockets
    for sock in sockets:
        sock.close()


def address(sock: socket.socket) -> str:
    return f"127.0.0.1:{sock.getsockname()[1]}"


def test_returns_0_as_soon_as_a_late_port_opens(
    spawn: Spawner, closed_ports: list[socket.socket]
) -> None:
    """The late port is probed, found down, then opened; wait sees it on a later round.
    With -v, each target's state is reported as it changes.

    wait probes its targets in order within a round, so its connect to ``witness`` (which
    listens from the start) proves it has already tried ``late`` and been refused.
    """
    late, witness, _ = closed_ports
    witness.listen()
    witness.settimeout(WAIT_S)
    wait = spawn.portd("wait", "-v", "--interval", "0.05", "--timeout", "10",
                       address(late), address(witness))  # fmt: skip
    probe, _ = witness.accept()
    probe.close()
    assert wait.proc.poll() is None  # late is still down
    late.listen()
    assert wait.wait() == 0
    assert len(wait.lines) == 3, wait.lines
    assert re.fullmatch(rf"{address(witness)} is up after \d+\.\d s", wait.lines[0])
    assert wait.lines[1] == f"{address(late)} is down: connection refused"  # once, not per round
    assert re.fullmatch(rf"{address(late)} is up after \d+\.\d s", wait.lines[2])
    assert wait.output == b""


def test_returns_0_at_once_when_all_are_up(spawn: Spawner) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as one,
        socket.create_server(("localhost", 0)) as two,
    ):
        wait = spawn.portd("wait", address(one), f"localhost:{two.getsockname()[1]}")
        assert wait.wait() == 0
    assert wait.lines == []


def test_timeout_exits_1_with_one_line_per_address_still_down(
    spawn: Spawner, closed_ports: list[socket.socket]
) -> None:
    """Refused (a bound port nobody listens on) and timed out (a listener whose accept queue
    is full: Linux drops the SYN, as a firewall would); the one that is up is not named."""
    refused, full, up = closed_ports
    full.listen(0)
    up.listen()
    with socket.create_connection(full.getsockname(), timeout=WAIT_S):  # fills the queue
        started = time.monotonic()
        wait = spawn.portd("wait", "--timeout", "1", address(refused), address(full), address(up))
        assert wait.wait() == 1
        elapsed = time.monotonic() - started
    assert wait.lines == [
        f"portd: {address(refused)} is still down after 1 s: connection refused",
        f"portd: {address(full)} is still down after 1 s: timed out",
    ]
    assert 1 <= elapsed < 5


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("80",), "portd: wait needs HOST:PORT, got '80'"),
        (("*:80",), "portd: wait needs HOST:PORT, got '*:80'"),
        (("127.0.0.1:99999",), "portd: port 99999 is out of range; expected 0-65535"),
    ],
    ids=["bare-port", "wildcard", "range"],
)
def test_bad_target_exits_64_with_one_line(
    spawn: Spawner, args: tuple[str, ...], line: str
) -> None:
    wait = spawn.portd("wait", *args)
    assert wait.wait() == 64
    assert wait.lines == [line]


@pytest.mark.parametrize("args", [(), ("--timeout", "0", "127.0.0.1:1")], ids=["none", "zero"])
def test_bad_arguments_exit_64_with_usage(spawn: Spawner, args: tuple[str, ...]) -> None:
    wait = spawn.portd("wait", *args)
    assert wait.wait() == 64
    assert wait.lines[0].startswith("usage: portd wait ")
    assert wait.lines[-1].startswith("portd wait: error: ")


def test_ctrl_c_exits_130_at_once(spawn: Spawner, closed_ports: list[socket.socket]) -> None:
    late, witness, _ = closed_ports
    witness.listen()
    witness.settimeout(WAIT_S)
    wait = spawn.portd("wait", "--timeout", "30", address(late), address(witness))
    witness.accept()[0].close()  # it is polling
    wait.interrupt()
    assert wait.wait(timeout=3) == 130
    assert wait.lines == []
